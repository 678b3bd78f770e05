"""ftprep/__init__.pyi, which editors read for the functions' signatures (the functions are made
at run time from the settings, which an editor cannot run): current, and used by an editor."""

import pytest

from ftprep.api_stub import STUB, render_stub


def test_the_stub_matches_the_settings_declared_now():
    assert STUB.read_text(encoding="utf-8") == render_stub(), "run: .venv/bin/python scripts/write-api-stub.py"


def test_an_editor_completes_the_options_of_a_function_from_the_stub():
    jedi = pytest.importorskip("jedi")
    source = "import ftprep\nftprep.mask('scored', thr"
    names = [completion.name for completion in jedi.Script(source).complete(2, len("ftprep.mask('scored', thr"))]
    assert "threshold=" in names, names
    signatures = jedi.Script("import ftprep\nftprep.score(").get_signatures(2, len("ftprep.score("))
    assert signatures and "top_k: int=0" in signatures[0].to_string()
