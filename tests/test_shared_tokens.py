"""Shared tokens a mask removes: counted per shard, merged, judged over the dataset; the warning that
mask, stats and the report show, and --keep-shared, on data/arithmetic.jsonl."""

import html
import json

import numpy as np
import pytest
from conftest import DATA, load_table, run_cli, score_folder

import ftprep
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import SHARED_COUNTS
from ftprep.stages.shared_tokens import phrases, removed_shared_tokens, shared_token_counts
from ftprep.writers import merge_counters


def shard(rows, masked_at):
    """rows: token ids per row (all candidates); masked_at: per row, the positions masked."""
    ids = np.concatenate([np.asarray(row) for row in rows])
    row_of_token = np.repeat(np.arange(len(rows)), [len(row) for row in rows])
    masked = np.zeros(len(ids), dtype=bool)
    starts = np.concatenate([[0], np.cumsum([len(row) for row in rows])])
    for row, positions in enumerate(masked_at):
        masked[starts[row] + np.asarray(positions, dtype=np.int64)] = True
    return shared_token_counts(ids, np.ones(len(ids), dtype=bool), masked, row_of_token, len(rows))


def test_a_closing_phrase_masked_in_every_row_is_found_and_joined():
    # Every row ends "... 7 8" (the closing phrase), masked everywhere; 5 appears in every row, masked once.
    first = shard([[1, 5, 2, 7, 8], [3, 5, 7, 8], [5, 4, 7, 8]], [[1, 3, 4], [2, 3], [2, 3]])
    second = shard([[6, 5, 7, 8], [5, 9, 7, 8]], [[2, 3], [2, 3]])
    counts = merge_counters([first, second])
    removed = removed_shared_tokens(counts, rows=5)
    assert [entry["id"] for entry in removed] == [7, 8]
    assert removed[0] == {"id": 7, "rows": 5, "masked_share": 1.0}
    assert phrases(removed, counts) == [[7, 8]]


def test_tokens_in_few_rows_or_mostly_kept_are_not_shared():
    # 7 is masked wherever it appears but is in 1 row of 4; 5 is in every row but kept in 3 of them.
    counts = shard([[7, 5, 1], [5, 2], [5, 3], [5, 4]], [[0, 1], [], [], []])
    assert removed_shared_tokens(counts, rows=4) == []


def test_tokens_in_few_rows_of_a_shard_take_no_keys():
    # A token seen in under a tenth of a shard's rows is not counted: the counts stay small.
    rows = [[1, 2]] * 19 + [[3]]
    counts = shard(rows, [[0]] * 20)
    assert "3" not in counts["rows"] and set(counts["rows"]) == {"1", "2"}


def test_a_token_followed_by_several_joins_the_most_frequent_one():
    # 7 is followed by 8 in four rows and by 9 in one: the phrase is 7 8; 9 stands alone.
    counts = shard([[7, 8], [7, 8], [7, 8], [7, 8], [7, 9, 9]], [[0, 1]] * 4 + [[0, 1, 2]])
    removed = removed_shared_tokens(counts, rows=5)
    assert {entry["id"] for entry in removed} == {7, 8}
    assert phrases(removed, counts) == [[7, 8]]


def test_phrases_carry_their_least_common_tokens_rows_and_one_warning_line():
    from ftprep.stages.shared_tokens import removed_shared_phrases, shared_ids, warning_line, what_to_do

    # 7 8 closes every row, masked everywhere; 5 opens it, masked in 4 of 5 rows (80 %).
    counts = shard([[5, 1, 7, 8], [5, 2, 7, 8], [5, 3, 7, 8], [5, 4, 7, 8], [5, 6, 7, 8]],
                   [[0, 2, 3], [0, 2, 3], [0, 2, 3], [0, 2, 3], [2, 3]])
    found = removed_shared_phrases(counts, rows=5)
    assert [phrase.ids for phrase in found] == [(7, 8), (5,)]
    assert found[0].rows == 5 and found[0].masked_share == 1.0 and found[1].masked_share == 0.8
    assert shared_ids(found) == [5, 7, 8]
    line = warning_line([(" The answer", found[0])], 5, "the mask removes", what_to_do(("threshold", "higher"), True))
    assert line == ('warning: the mask removes what most rows share, so the model will not learn it: " The answer" '
                    "(in 5 of 5 rows, 100% of it masked). State the format in the prompt, regenerate the answers with "
                    "ftprep regen, or lower the mask's reach (a higher --threshold, or --keep-shared).")
    assert "\n" not in line
    assert what_to_do(None, False) == "State the format in the prompt, regenerate the answers with ftprep regen."


# -- on data/arithmetic.jsonl, where STM masks " The answer" in every row -------------------------

@pytest.fixture(scope="module")
def scored_arithmetic(tmp_path_factory):
    return score_folder(DATA / "arithmetic.jsonl", tmp_path_factory.mktemp("arithmetic") / "scored")


def the_answer_positions(folder, tokenizer):
    """Per row of a mask output, where " The answer" stands, and its labels there."""
    phrase = tokenizer.encode(" The answer", add_special_tokens=False)
    table = load_table(folder)
    found = []
    for ids, labels in zip(table.column("input_ids").to_pylist(), table.column("labels").to_pylist()):
        start = next(i for i in range(len(ids)) if ids[i:i + len(phrase)] == phrase)
        found.append((ids[start:start + len(phrase)], labels[start:start + len(phrase)]))
    return found


@pytest.mark.slow
def test_mask_stats_and_report_say_the_mask_removes_the_answer_format(scored_arithmetic, tmp_path, tokenizer):
    train = tmp_path / "train"
    shown = run_cli("mask", scored_arithmetic, "-o", train).stdout
    warning = next(line for line in shown.splitlines() if line.startswith("warning: "))
    assert '" The answer" (in 24 of 24 rows, 100% of it masked)' in warning and "--keep-shared" in warning
    assert "a higher --threshold" in warning and "ftprep regen" in warning and "State the format in the prompt" in warning
    stats = json.loads((train / "stats.json").read_text())
    assert stats["shared_tokens_warning"] == warning and SHARED_COUNTS not in stats
    assert stats["shared_tokens_removed"][0]["text"] == " The answer" and stats["shared_tokens_removed"][0]["rows"] == 24
    assert all(labels == [-100, -100] for _, labels in the_answer_positions(train, tokenizer))
    assert warning in run_cli("stats", train).stdout.splitlines()
    # On the scores alone, stats says what the paper's threshold would remove.
    preview = run_cli("stats", scored_arithmetic).stdout.splitlines()[-1]
    assert preview.startswith("warning: --threshold 2.5 (STM) would remove") and '" The answer"' in preview
    run_cli("report", train, "-o", tmp_path / "report.html")
    assert f'<p class="warning">{html.escape(warning)}</p>' in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_keep_shared_keeps_the_answer_format_supervised(scored_arithmetic, tmp_path, tokenizer):
    kept = tmp_path / "kept"
    shown = run_cli("mask", scored_arithmetic, "-o", kept, "--keep-shared").stdout
    assert "warning" not in shown
    assert '--keep-shared kept 48 tokens supervised that the mask would remove from what most rows share: " The answer"' in shown
    assert all(labels == ids for ids, labels in the_answer_positions(kept, tokenizer))
    stats = json.loads((kept / "stats.json").read_text())
    run_cli("mask", scored_arithmetic, "-o", tmp_path / "plain")
    plain = json.loads((tmp_path / "plain" / "stats.json").read_text())
    assert stats["kept_shared_tokens"] == 48 == plain["masked_tokens"] - stats["masked_tokens"]
    assert "shared_tokens_warning" not in stats and stats["shared_tokens_kept"]["phrases"][0]["text"] == " The answer"
    # The Python API, and a strategy that looks at the whole dataset first.
    python = ftprep.mask(str(scored_arithmetic), output=str(tmp_path / "py"), keep_shared=True)
    assert python["labels"] == load_table(kept).column("labels").to_pylist()
    quantile = tmp_path / "quantile"
    run_cli("mask", scored_arithmetic, "-o", quantile, "--strategy", "quantile", "--scope", "dataset", "--keep-shared")
    assert all(labels == ids for ids, labels in the_answer_positions(quantile, tokenizer))


@pytest.mark.slow
def test_keep_shared_goes_with_hard_strategies_only(scored_arithmetic, tmp_path):
    refused = run_cli("mask", scored_arithmetic, "-o", tmp_path / "soft", "--strategy", "soft", "--keep-shared", check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("error: --keep-shared keeps labels, and soft writes more")
    assert "--strategy threshold or --strategy quantile" in refused.stderr and not (tmp_path / "soft").exists()
    with pytest.raises(FtprepError, match=r"keep_shared= keeps labels.*strategy='threshold'"):
        ftprep.mask(str(scored_arithmetic), output=str(tmp_path / "py"), strategy="soft", keep_shared=True)


@pytest.mark.slow
def test_dry_run_prints_the_stats_of_the_mask_and_writes_nothing(scored_arithmetic, tmp_path):
    dry = run_cli("mask", scored_arithmetic, "-o", tmp_path / "train", "--dry-run", "--threshold", "3").stdout
    assert not (tmp_path / "train").exists() and "dry run: nothing written" in dry
    run_cli("mask", scored_arithmetic, "-o", tmp_path / "real", "--threshold", "3")
    stats = json.loads((tmp_path / "real" / "stats.json").read_text())
    assert f"masked_tokens: {stats['masked_tokens']}\n" in dry and stats["shared_tokens_warning"] in dry
