"""Item 4 of issue 26, as a user meets it, on the scored folder of tests/fixtures (no model loads):
report refuses to replace a file, options of another strategy are refused, messages only where
there is something to see, a resume says so, another input is named."""


from conftest import REPO, run_cli

SCORED = REPO / "tests" / "fixtures" / "schema0" / "scored"
TRAIN = REPO / "tests" / "fixtures" / "schema0" / "train"


def last_error(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_report_refuses_to_replace_a_file_unless_overwrite(tmp_path):
    page = tmp_path / "report.html"
    page.write_text("my notes")
    assert last_error(run_cli("report", TRAIN, "-o", page, check=False)) == (
        f"error: {page} exists: pass --overwrite to replace it, or choose another -o")
    assert page.read_text() == "my notes"
    assert run_cli("report", TRAIN, "-o", page, "--overwrite").stdout.strip() == f"wrote {page}"
    assert "<svg" in page.read_text()
