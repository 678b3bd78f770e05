"""The package as users install and import it: one `ftprep` namespace, the layout's folders
mapped into it, nothing shadowing the standard library, the stages' import rule enforced."""

import subprocess
import sys

import pytest
from conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11 and later
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FOLDERS = {"pipeline": "ftprep", "stages": "ftprep.stages"}


def package_names() -> set[str]:
    """Every folder with an __init__.py under pipeline/ and stages/, by its import name."""
    names = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            names.add(".".join((package, *parts)))
    return names


def test_every_package_folder_is_installed_under_ftprep():
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert setuptools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    assert set(setuptools["packages"]) == package_names()
    assert PYPROJECT["project"]["scripts"]["ftprep"] == "ftprep.cli:main"


def test_no_module_shadows_the_standard_library():
    modules = {path.stem for folder in FOLDERS for path in (REPO / folder).rglob("*.py")}
    assert not modules & set(sys.stdlib_module_names)


def test_every_pipeline_module_is_banned_in_the_stages():
    banned = set(PYPROJECT["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"])
    pipeline = {f"ftprep.{path.stem}" for path in (REPO / "pipeline").glob("*.py") if path.stem != "__init__"}
    pipeline |= {f"ftprep.{path.parent.name}" for path in (REPO / "pipeline").glob("*/__init__.py")}
    assert banned == pipeline


def test_the_cli_runs_as_a_script_from_its_folder():
    # Its folder comes first on sys.path then: a module named like one of the standard library's breaks it.
    result = subprocess.run([sys.executable, str(REPO / "pipeline" / "cli.py"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "score" in result.stdout and "Traceback" not in result.stderr


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    import ftprep

    assert ftprep.__version__ == version("ftprep") == PYPROJECT["project"]["version"]


def test_the_command_list_imports_no_command():
    """`ftprep --help` lists the commands from their summaries: no command module, and none of the
    heavy libraries they use, is imported for it."""
    code = ("import sys\nfrom ftprep.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(name for name in sys.modules if name.startswith('ftprep.commands.') or name in ('torch', 'numpy', 'pyarrow')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "score" in result.stdout and result.stdout.strip().splitlines()[-1] == "[]"
