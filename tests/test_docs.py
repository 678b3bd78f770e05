"""The docs site (docs/, mkdocs.yml): the generated CLI reference is current, the site builds with
--strict in the order the navigation promises, its Quickstart page renders in a browser, and every
snippet of the Quickstart runs."""

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCRIPT = REPO / "scripts" / "cli-reference.py"
BIN = Path(sys.executable).parent

# The pages the site promises (issue 24), in the order its navigation shows them.
NAV_ORDER = ["index.md", "quickstart.md", "concepts.md",
             "guide/score.md", "guide/regen.md", "guide/mask.md", "guide/views.md", "guide/export.md",
             "guide/trainers.md", "guide/iv.md", "guide/hft-plan.md", "guide/ray.md",
             "results/forgetting.md", "results/speed.md",
             "reference/cli.md", "reference/api.md", "reference/formats.md",
             "differences.md", "verified.md", "development.md"]


def cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_reference(*args, patch=""):
    """scripts/cli-reference.py in a fresh process (the commands' click objects are built once per
    process), after `patch`, Python run first."""
    code = textwrap.dedent(patch) + textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]
        runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_cli_reference_is_current():
    result = run_reference("--check")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_cli_reference_covers_every_command_and_option():
    """The reference lists every command and every option click knows, whatever options other
    branches add: it is built from the same click objects."""
    import click

    from ftprep.cli import cli

    text = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    root = click.Context(cli, info_name="ftprep")
    for name in cli.list_commands(root):
        command = cli.commands[name]
        assert f"## ftprep {name} {{#{name}}}" in text, name
        section = text.split(f"## ftprep {name} {{#{name}}}", 1)[1].split("\n## ", 1)[0]
        context = click.Context(command, info_name=name, parent=root)
        for param in command.get_params(context):
            if param is command.get_help_option(context):
                continue
            shown = param.human_readable_name if isinstance(param, click.Argument) else max(param.opts, key=len)
            assert f"`{shown}`" in section, (name, shown)


def test_a_changed_default_makes_the_check_fail():
    """Change the default of an option in its Settings declaration (the first number-valued one
    the commands declare) without regenerating the file: the check fails and its diff shows it."""
    patch = """
        import dataclasses, ftprep.settings as settings
        original, changed = settings.click_params, []
        def click_params(cls):
            for item in dataclasses.fields(cls):
                if not changed and type(item.default) is float:
                    item.default = item.default * 2 + 1.25
                    changed.append(item.default)
                    print(f"CHANGED {cls.__name__}.{item.name} -> {item.default:g}")
            return original(cls)
        settings.click_params = click_params
    """
    result = run_reference("--check", patch=patch)
    assert "CHANGED" in result.stdout, result.stdout + result.stderr
    new_value = result.stdout.split("-> ", 1)[1].split()[0]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-2000:]
    assert "is stale" in result.stdout
    assert "+| " in result.stdout and f"`{new_value}`" in result.stdout


def test_cli_reference_cells_escape_markup():
    module = cli_reference()
    assert module.cell("a | b *c* `d`\n  e") == "a \\| b \\*c\\* \\`d\\` e"
    assert module.cell("<x>") == "&lt;x&gt;"


def test_nav_lists_the_pages_in_order_and_every_page_is_in_it():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8"))

    def pages(items):
        for item in items:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            if isinstance(value, list):
                yield from pages(value)
            else:
                yield value

    nav = list(pages(config["nav"]))
    assert nav == NAV_ORDER
    on_disk = sorted(str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md"))
    assert on_disk == sorted(nav)


def build_site(target: Path) -> subprocess.CompletedProcess:
    # `python -m mkdocs`, not the mkdocs script: the script's own folder (the venv's bin/, which
    # holds the `ftprep` console script) would come first on sys.path, and mkdocstrings would take
    # that file for the ftprep package.
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(target)],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    target = tmp_path_factory.mktemp("site")
    result = build_site(target)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "WARNING" not in result.stderr, result.stderr[-6000:]
    return target


def test_site_builds_strict_with_every_page(site):
    for page in NAV_ORDER:
        html = site / (page[:-3] + "/index.html" if page != "index.md" else "index.html")
        assert html.is_file(), page
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ftprep.score", "ftprep.mask", "ftprep.regen", "with_token_weights", "apply_hft_plan"):
        assert name in api, name  # mkdocstrings rendered the docstrings


def test_forgetting_page_keeps_the_results_slot():
    text = (DOCS / "results" / "forgetting.md").read_text(encoding="utf-8")
    assert "<!-- forgetting-results -->" in text
    assert "<!-- forgetting-results -->" in (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_is_a_landing_page():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", "\n".join(lines)):
        if "://" not in target:
            assert (REPO / target).exists(), target  # the README's links into docs/ resolve


@pytest.mark.slow
def test_quickstart_page_renders_with_navigation_and_code(site, tmp_path):
    """The built Quickstart in headless Chromium: the navigation and the code blocks are there
    (the DOM after the page's scripts ran), and the screenshot is not a blank page."""
    from test_report import rendered_dom, screenshot

    page = site / "quickstart" / "index.html"
    dom = rendered_dom(page, tmp_path / "profile")
    assert 'class="md-nav' in dom and "Concepts" in dom and "Command line" in dom
    assert dom.count("<pre") >= 4 and "ftprep score data/sample.jsonl" in re.sub(r"<[^>]+>", "", dom)
    image = screenshot(page, tmp_path / "quickstart.png", tmp_path / "profile")
    image = image[:1200]  # the first screen
    colours = {tuple(pixel) for pixel in image[::4, ::4].reshape(-1, 3)}
    assert len(colours) > 50, "the page looks blank"
    dark = (image.sum(axis=-1) < 200).mean()  # text
    assert dark > 0.005, f"hardly any text drawn ({dark:.4f} of the pixels)"


def snippets(page: Path):
    """The ```sh and ```python blocks of a page, in order."""
    return [(kind, body) for kind, body in re.findall(r"^```(sh|python)\n(.*?)^```", page.read_text(encoding="utf-8"),
                                                       flags=re.S | re.M)]


def shell_lines(body: str):
    for line in body.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            yield line


@pytest.mark.slow
def test_quickstart_snippets_run(tmp_path):
    """Every shell and Python snippet of docs/quickstart.md, in order, in a fresh folder holding the
    repository's data/, with this venv's commands first on PATH. Two kinds of line are checked
    rather than run as written: `pip install ...` runs offline as a dry run (it must be satisfied by
    what is installed, without the network), and `make demo` as `make -n demo` (the targets exist;
    the demo's own commands are the ones the next block runs on fewer rows)."""
    blocks = snippets(DOCS / "quickstart.md")
    assert [kind for kind, _ in blocks].count("sh") >= 3 and any(kind == "python" for kind, _ in blocks)
    (tmp_path / "data").symlink_to(REPO / "data")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    ran = []
    for kind, body in blocks:
        if kind == "python":
            result = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=900)
            assert result.returncode == 0, body + result.stderr[-4000:]
            ran.append("python")
            continue
        for line in shell_lines(body):
            words = shlex.split(line)
            cwd = tmp_path
            if words[:2] == ["pip", "install"]:
                line = shlex.join([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                                   "--no-build-isolation", *words[2:]])
                cwd = REPO
            elif words[:2] == ["make", "demo"]:
                line, cwd = "make -n demo", REPO
            elif words[0] == "python":
                line = shlex.join([sys.executable, *words[1:]])
            result = subprocess.run(line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
            assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            ran.append(line)
    assert (tmp_path / "train" / "ftprep.json").is_file() and (tmp_path / "train.py").is_file()
    assert (tmp_path / "train-soft" / "ftprep.json").is_file()
