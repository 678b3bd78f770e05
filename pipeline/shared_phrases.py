"""The shared-token warning as mask, stats and the report show it: the phrases a mask removes from
most rows (stages.shared_tokens judges them from merged counts), decoded with the scored model's
tokenizer, and the one line about them that stats.json keeps."""

from __future__ import annotations

from ftprep.stages.shared_tokens import removed_shared_phrases, warning_line

REMOVED = "shared_tokens_removed"  # stats.json: the phrases, with their counts
WARNING = "shared_tokens_warning"  # stats.json: the line mask, stats and the report show


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
