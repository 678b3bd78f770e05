"""Shared tokens a mask removes: counted per shard, merged, judged over the dataset."""

import numpy as np

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
