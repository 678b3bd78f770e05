"""The shared-token warning as mask, stats and the report show it: the phrases a mask removes from
most rows (stages.shared_tokens judges them from merged counts), decoded with the scored model's
tokenizer, and the one line about them that stats.json keeps."""

from __future__ import annotations

import json

from ftprep.stages.shared_tokens import removed_shared_phrases, warning_line

REMOVED = "shared_tokens_removed"  # stats.json: the phrases, with their counts
WARNING = "shared_tokens_warning"  # stats.json: the line mask, stats and the report show
KEPT = "shared_tokens_kept"  # stats.json, mask --keep-shared: the tokens it kept supervised, and their phrases


def decoded(found, tokenizer) -> list[tuple[str, object]]:
    return [(tokenizer.decode(list(phrase.ids)), phrase) for phrase in found]


def shared_tokens_stats(counts: dict, rows: int, tokenizer_of, lead: str, fixes: str) -> dict:
    """{REMOVED: [...], WARNING: line} where the mask removes shared phrases, else {}.
    `tokenizer_of()`: the scored model's tokenizer, loaded only when there is something to decode."""
    found = removed_shared_phrases(counts, rows)
    if not found:
        return {}
    texts = decoded(found, tokenizer_of())
    return {REMOVED: [phrase.as_json(text) for text, phrase in texts], WARNING: warning_line(texts, rows, lead, fixes)}


def kept_stats(tokens: int, found, tokenizer_of) -> dict:
    """{KEPT: ...}: what --keep-shared kept supervised (`found`: the phrases its first pass named)."""
    texts = decoded(found, tokenizer_of()) if found else []
    return {KEPT: {"tokens": int(tokens), "phrases": [phrase.as_json(text) for text, phrase in texts]}}


def kept_line(kept: dict) -> str:
    if not kept["phrases"]:
        return "--keep-shared: the mask removes nothing that most rows share, so it kept nothing"
    texts = ", ".join(json.dumps(entry["text"], ensure_ascii=False) for entry in kept["phrases"])
    return f"--keep-shared kept {kept['tokens']:,} tokens supervised that the mask would remove from what most rows share: {texts}"


def notes(stats: dict) -> list[str]:
    """The lines mask, stats and the report show about shared tokens: what --keep-shared kept, the warning."""
    lines = [kept_line(stats[KEPT])] if isinstance(stats.get(KEPT), dict) else []
    return lines + ([stats[WARNING]] if stats.get(WARNING) else [])
