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

import json
from dataclasses import dataclass

import numpy as np

from ftprep.stages.errors import COMMAND_LINE, Setting

ROW_SHARE = 0.5
MASKED_SHARE = 0.8
MIN_ROWS = 3
# A shard keeps the counts of tokens seen in at least this share of its rows: what could be shared
# over the dataset, in a few hundred keys at most, not one per vocabulary entry.
SHARD_ROW_SHARE = 0.1
# Phrases a warning names; the others are counted ("and 2 more").
NAMED_PHRASES = 3


def empty_counts() -> dict[str, dict[str, int]]:
    return {"rows": {}, "tokens": {}, "masked": {}, "pairs": {}}


def shared_token_counts(input_ids: np.ndarray, candidates: np.ndarray, masked: np.ndarray, row_of_token: np.ndarray,
                        rows: int) -> dict[str, dict[str, int]]:
    """One shard's counts per token id (as text keys): rows it appears in among the candidates,
    occurrences, occurrences masked; and adjacent pairs masked together ("a b": count), which
    join a phrase's tokens."""
    ids, row_of = input_ids[candidates].astype(np.int64), row_of_token[candidates].astype(np.int64)
    if not len(ids):
        return empty_counts()
    span = int(ids.max()) + 1
    token_rows = np.unique(row_of * span + ids) % span  # one entry per (row, token) pair
    found, rows_with = np.unique(token_rows, return_counts=True)
    common = rows_with >= max(1, SHARD_ROW_SHARE * rows)
    keep = found[common]
    kept = np.isin(ids, keep)
    tokens, occurrences = np.unique(ids[kept], return_counts=True)
    masked_found, masked_counts = np.unique(ids[kept & masked[candidates]], return_counts=True)
    both = masked & candidates & np.isin(input_ids, keep)
    together = both[:-1] & both[1:] & (row_of_token[:-1] == row_of_token[1:])
    first, second = input_ids[:-1][together].astype(np.int64), input_ids[1:][together].astype(np.int64)
    pairs, pair_counts = np.unique(np.stack([first, second], axis=1), axis=0, return_counts=True) if len(first) else ([], [])
    return {"rows": {str(t): int(n) for t, n in zip(keep, rows_with[common])},
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
    are the pair "a b" (the most frequent such b, where there are several). In order of the
    phrases' first token in `removed`."""
    ids = {entry["id"] for entry in removed}
    masked = counts.get("masked", {})
    best: dict[int, tuple[int, int]] = {}  # a -> (count, b)
    for pair, count in counts.get("pairs", {}).items():
        a, b = map(int, pair.split())
        if a in ids and b in ids and a != b and count >= MASKED_SHARE * min(masked.get(str(a), 0), masked.get(str(b), 0)):
            best[a] = max(best.get(a, (0, b)), (count, b))
    follows = {a: b for a, (_, b) in best.items()}
    starts = [entry["id"] for entry in removed if entry["id"] not in follows.values()]
    found = []
    for start in starts:
        phrase = [start]
        while phrase[-1] in follows and follows[phrase[-1]] not in phrase:
            phrase.append(follows[phrase[-1]])
        found.append(phrase)
    return found


@dataclass(frozen=True)
class SharedPhrase:
    """A phrase the mask removes from most rows: its token ids, the rows it appears in (its least
    common token's), and the share of its occurrences masked (its least masked token's)."""

    ids: tuple[int, ...]
    rows: int
    masked_share: float

    def as_json(self, text: str) -> dict:
        return {"text": text, "ids": list(self.ids), "rows": self.rows, "masked_share": round(self.masked_share, 4)}


def removed_shared_phrases(counts: dict, rows: int) -> list[SharedPhrase]:
    """What the mask removes of what `rows` rows share, as phrases, most rows first."""
    removed = removed_shared_tokens(counts, rows)
    by_id = {entry["id"]: entry for entry in removed}
    found = [SharedPhrase(tuple(phrase), min(by_id[token]["rows"] for token in phrase),
                          min(by_id[token]["masked_share"] for token in phrase)) for phrase in phrases(removed, counts)]
    return sorted(found, key=lambda phrase: (-phrase.rows, -phrase.masked_share, phrase.ids))


def shared_ids(found: list[SharedPhrase]) -> list[int]:
    """Every token id of the phrases, once each, in order."""
    return sorted({token for phrase in found for token in phrase.ids})


def warning_line(found: list[tuple[str, SharedPhrase]], rows: int, lead: str, fixes: str) -> str:
    """One line naming the removed shared phrases (decoded: (text, phrase)) and what to do.
    `lead`: who removes them ("the mask removes", "--threshold 2.5 would remove")."""
    named = [f"{json.dumps(text, ensure_ascii=False)} (in {phrase.rows} of {rows} rows, {phrase.masked_share:.0%} of it masked)"
             for text, phrase in found[:NAMED_PHRASES]]
    more = f" and {len(found) - NAMED_PHRASES} more" if len(found) > NAMED_PHRASES else ""
    it = "it" if len(found) == 1 else "them"
    return f"warning: {lead} what most rows share, so the model will not learn {it}: {', '.join(named)}{more}. {fixes}"


def what_to_do(looser: tuple[str, str] | None, can_keep_shared: bool) -> str:
    """The fixes a warning offers. `looser`: (option, "higher" or "lower"), how the strategy masks
    less; `can_keep_shared`: whether it takes --keep-shared. Named as the command line names them:
    stats.json is data, whoever ran the mask."""
    reach = []
    if looser is not None:
        option, way = looser
        reach.append(f"a {way} {COMMAND_LINE.setting(Setting(option))}")
    if can_keep_shared:
        reach.append(COMMAND_LINE.setting(Setting("keep_shared")))
    lower = f", or lower the mask's reach ({', or '.join(reach)})" if reach else ""
    return f"State the format in the prompt, regenerate the answers with ftprep regen{lower}."
