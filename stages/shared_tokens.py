"""Shared tokens a mask removes: tokens most rows hold that the mask takes out nearly everywhere.

A fixed closing sentence or format marker ("The answer is N", "Answer:") is what rows share, and the
tokens the model finds unlikely before training: STM masks them in every row, so the model never
learns them (the forgetting bench's stress regime: " The answer" masked in 400 of 400 rows, and
replies that stop before it). Counted per shard, merged by key (merge_counters), judged over the
whole dataset.

A token is shared when it appears among a row's mask candidates in at least ROW_SHARE of the rows
(and MIN_ROWS rows), and removed when at least MASKED_SHARE of its occurrences get no loss.
"""

from __future__ import annotations

import numpy as np

ROW_SHARE = 0.5
MASKED_SHARE = 0.8
MIN_ROWS = 3
# A shard keeps the counts of tokens seen in at least this share of its rows: what could be shared
# over the dataset, in a few hundred keys at most, not one per vocabulary entry.
SHARD_ROW_SHARE = 0.1


def shared_token_counts(input_ids: np.ndarray, candidates: np.ndarray, masked: np.ndarray, row_of_token: np.ndarray,
                        rows: int) -> dict[str, dict[str, int]]:
    """One shard's counts per token id (as text keys): rows it appears in among the candidates,
    occurrences, occurrences masked; and adjacent pairs masked together ("a b": count), which
    join a phrase's tokens."""
    ids, row_of = input_ids[candidates].astype(np.int64), row_of_token[candidates].astype(np.int64)
    if not len(ids):
        return {"rows": {}, "tokens": {}, "masked": {}, "pairs": {}}
    token_rows = np.unique(row_of * (int(ids.max()) + 1) + ids) % (int(ids.max()) + 1)
    found, rows_with = np.unique(token_rows, return_counts=True)
    keep = found[rows_with >= max(1, SHARD_ROW_SHARE * rows)]
    kept = np.isin(ids, keep)
    tokens, occurrences = np.unique(ids[kept], return_counts=True)
    masked_ids = ids[kept & masked[candidates]]
    masked_found, masked_counts = np.unique(masked_ids, return_counts=True)
    both = masked & candidates & np.isin(input_ids, keep)
    together = both[:-1] & both[1:] & (row_of_token[:-1] == row_of_token[1:])
    first, second = input_ids[:-1][together].astype(np.int64), input_ids[1:][together].astype(np.int64)
    pairs, pair_counts = np.unique(np.stack([first, second], axis=1), axis=0, return_counts=True) if len(first) else ([], [])
    return {"rows": {str(t): int(n) for t, n in zip(found[np.isin(found, keep)], rows_with[np.isin(found, keep)])},
            "tokens": {str(t): int(n) for t, n in zip(tokens, occurrences)},
            "masked": {str(t): int(n) for t, n in zip(masked_found, masked_counts)},
            "pairs": {f"{a} {b}": int(n) for (a, b), n in zip(pairs, pair_counts)}}


def removed_shared_tokens(counts: dict, rows: int) -> list[dict]:
    """The shared tokens the mask removes, most rows first: id, rows it appears in, share of its
    occurrences masked."""
    found = []
    for token, seen_rows in counts.get("rows", {}).items():
        occurrences = counts["tokens"].get(token, 0)
        share = counts["masked"].get(token, 0) / occurrences if occurrences else 0.0
        if seen_rows >= max(MIN_ROWS, ROW_SHARE * rows) and share >= MASKED_SHARE:
            found.append({"id": int(token), "rows": int(seen_rows), "masked_share": share})
    return sorted(found, key=lambda entry: (-entry["rows"], -entry["masked_share"], entry["id"]))


def phrases(removed: list[dict], counts: dict) -> list[list[int]]:
    """The removed tokens joined into phrases: b follows a when most of their masked occurrences
    are the pair "a b". In order of the phrases' first token in `removed`."""
    ids = {entry["id"] for entry in removed}
    masked = counts.get("masked", {})
    follows = {}
    for pair, count in counts.get("pairs", {}).items():
        a, b = map(int, pair.split())
        if a in ids and b in ids and a != b and count >= MASKED_SHARE * min(masked.get(str(a), 0), masked.get(str(b), 0)):
            follows[a] = b
    starts = [entry["id"] for entry in removed if entry["id"] not in follows.values()]
    found = []
    for start in starts:
        phrase = [start]
        while phrase[-1] in follows and follows[phrase[-1]] not in phrase:
            phrase.append(follows[phrase[-1]])
        found.append(phrase)
    return found
