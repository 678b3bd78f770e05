"""Progress that moves: per batch of tokens within a shard, a plain line off a terminal, the
numbers of stats.json at the end, and no loading bars of transformers' own."""

import io
import json

import pytest
from conftest import DATA, progress_lines, run_cli

import ftprep.progress
from ftprep.progress import Progress


@pytest.mark.slow
def test_progress_moves_within_one_shard_and_ends_on_the_stats(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(ftprep.progress, "PLAIN_LINE_SECONDS", 0.0)  # a line at every update
    out = tmp_path / "scored"
    # 40 rows in one shard (--shard-rows 1000), scored in batches of at most 256 tokens.
    result = run_cli("score", DATA / "sample.jsonl", "-o", out, "--model", tiny_model_dir, "--batch-tokens", 256)
    lines = progress_lines(result.stderr)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_in"] == 40 and len(list(out.glob("data-*.arrow"))) == 1
    within_the_shard = [rows for rows, _ in lines if rows < stats["rows_in"]]
    assert len(within_the_shard) >= 5, result.stderr
    assert [rows for rows, _ in lines] == sorted(rows for rows, _ in lines)  # it only moves forward
    assert lines[-1] == (stats["rows_in"], stats["tokens"])  # the last line says what stats.json says
    assert "ETA" in result.stderr.splitlines()[0]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_off_a_terminal_a_plain_line_comes_every_interval(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ftprep.progress.time, "monotonic", clock)
    stream = io.StringIO()  # not a terminal
    progress = Progress("score", 100, stream=stream)
    assert progress.interval == ftprep.progress.PLAIN_LINE_SECONDS == 30.0
    for second, rows in ((10, 10), (29, 10), (31, 10), (50, 10), (62, 10)):
        clock.now = second
        progress.update(rows, 1000)
    assert stream.getvalue().splitlines() == ["score: 30/100 rows, 3,000 tokens (97 tok/s), 31s, ETA 1m12s",
                                              "score: 50/100 rows, 5,000 tokens (81 tok/s), 1m02s, ETA 1m02s"]
    clock.now = 70
    progress.update(50, 5000)
    progress.close()  # one last line with the totals
    assert stream.getvalue().splitlines()[-1] == "score: 100/100 rows, 10,000 tokens (143 tok/s), 1m10s"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.slow
def test_loading_a_model_shows_no_loading_bar_and_restores_the_bars(tiny_model_dir, monkeypatch):
    from transformers.utils import logging as hf_logging

    from ftprep.models import load_model

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    hf_logging.enable_progress_bar()
    load_model(tiny_model_dir, "float32", "cpu")
    assert "Loading weights" not in terminal.getvalue()
    assert hf_logging.is_progress_bar_enabled()  # a notebook's bars come back after ftprep's load


@pytest.mark.slow
def test_regen_progress_moves_per_generation_batch(tmp_path, tiny_model_dir, monkeypatch):
    import ftprep.commands.regen

    monkeypatch.setattr(ftprep.progress, "PLAIN_LINE_SECONDS", 0.0)
    # A small generation budget: a few prompts per `generate` call, so one shard takes several.
    monkeypatch.setattr(ftprep.commands.regen, "default_generation_tokens", lambda device: 400)
    out = tmp_path / "regen"
    result = run_cli("regen", DATA / "arithmetic.jsonl", "-o", out, "--limit", 12, "--model", tiny_model_dir,
                     "--n", 1, "--max-new-tokens", 8)
    lines = progress_lines(result.stderr, "regen")
    stats = json.loads((out / "stats.json").read_text())
    assert len([rows for rows, _ in lines if rows < 12]) >= 3, result.stderr
    assert lines[-1] == (stats["rows_in"], stats["generated_tokens"]) == (12, stats["generated_tokens"])


def test_a_row_counts_as_done_when_all_its_turns_are_generated():
    from ftprep.stages.regen import rows_done_reporter
    from ftprep.stages.regen.generate import Candidate

    heard = []
    report = rows_done_reporter([0, 0, 1, 2], lambda rows, tokens: heard.append((rows, tokens)))
    report([0, 2], [[Candidate("a", True, 3)], [Candidate("b", True, 4), Candidate("c", False, 5)]])
    report([1, 3], [[Candidate("d", True, 1)], []])
    assert heard == [(1, 12), (2, 1)]  # row 1 first; row 0 once its second turn is done, with row 2


def test_batch_reports_from_ray_workers_end_on_each_shards_committed_counts():
    from ftprep.engines import ShardReports

    progress = Progress("score", 20, interval=0.0, stream=io.StringIO())
    reports = ShardReports(progress)
    reports.apply([(0, 3, 300), (1, 4, 400), (0, 2, 200)])  # two shards run at once
    assert (progress.rows, progress.tokens) == (9, 900)
    reports.finish(0, 10, 1000)  # committed: 10 rows (rejected ones included), 1,000 tokens
    assert (progress.rows, progress.tokens) == (14, 1400)
    reports.apply([(0, 5, 500), (1, 6, 600)])  # shard 0's last report came after its commit: counted already
    reports.finish(1, 10, 1000)
    assert (progress.rows, progress.tokens) == (20, 2000)


def test_the_progress_period_comes_from_the_environment(monkeypatch, tmp_path, tiny_model_dir):
    monkeypatch.setenv("FTPREP_PROGRESS_SECONDS", "5")
    assert Progress("score", 10, stream=io.StringIO()).interval == 5.0
    monkeypatch.setenv("FTPREP_PROGRESS_SECONDS", "soon")
    result = run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", "--model", tiny_model_dir, check=False)
    assert result.returncode == 1 and result.stderr.strip().splitlines() == [
        "error: FTPREP_PROGRESS_SECONDS='soon': give the seconds between progress lines, e.g. 30"]
    assert not (tmp_path / "out").exists()
