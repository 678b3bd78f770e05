"""Cheap checks come first (issue 26, item 5): the output folder, the format and the columns are
checked before any model is resolved or loaded, so a mistake costs a moment and leaves nothing.
resolve_runtime (which finds and loads the model) is replaced by one that fails the test."""

import json
import time

import pytest
from conftest import DATA, run_cli
from test_faults import one_line_error

import ftprep


@pytest.fixture
def model_never_resolved(monkeypatch):
    import ftprep.commands.model_run as model_run

    def refuse(*args, **kwargs):
        raise AssertionError("the model was resolved before the cheap checks refused the run")

    monkeypatch.setattr(model_run, "resolve_runtime", refuse)


@pytest.mark.parametrize("command", ["score", "regen"])
def test_a_foreign_output_folder_is_refused_before_the_model_and_at_once(tmp_path, model_never_resolved, command):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    started = time.monotonic()
    last = one_line_error(run_cli(command, DATA / "sample.jsonl", "-o", mine, check=False), "holds files ftprep did not write")
    assert time.monotonic() - started < 3
    assert "--overwrite" not in last.split("(")[0]  # the hint is one that works: --overwrite would refuse too
    assert (mine / "notes.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_an_output_that_is_a_file_is_refused_before_the_model(tmp_path, model_never_resolved):
    (tmp_path / "out").write_text("x")
    one_line_error(run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", check=False), "is a file, not a folder")


def test_a_format_that_reads_no_row_of_the_first_shard_stops_before_the_model_and_leaves_nothing(tmp_path,
                                                                                                model_never_resolved):
    started = time.monotonic()
    last = one_line_error(run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", "--format", "alpaca",
                                  check=False), "--format alpaca reads none of the first")
    assert time.monotonic() - started < 3
    assert "pass --format messages, or leave --format out" in last
    assert not (tmp_path / "out").exists()


def test_rows_of_no_format_are_refused_before_the_model(tmp_path, model_never_resolved):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"question": "a", "answer": "b"}) + "\n")
    one_line_error(run_cli("score", path, "-o", tmp_path / "out", "--format", "sharegpt", check=False),
                   "reads none of the first 1 rows", "give rows with the columns of one format")
    assert not (tmp_path / "out").exists()


def test_the_python_api_fails_as_fast(tmp_path, model_never_resolved):
    (tmp_path / "mydir").mkdir()
    (tmp_path / "mydir" / "notes.txt").write_text("mine")
    with pytest.raises(ftprep.FtprepError, match="holds files ftprep did not write"):
        ftprep.score(DATA / "sample.jsonl", output=tmp_path / "mydir")
    with pytest.raises(ftprep.FtprepError, match=r"^format='alpaca' reads none of the first"):
        ftprep.score(DATA / "sample.jsonl", output=tmp_path / "out", format="alpaca")
    assert not (tmp_path / "out").exists()
