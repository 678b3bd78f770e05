"""`ftprep inspect`: one row's tokens with their marks (by stages.supervision's rule) and its numbers;
a regenerated row side by side with its ground truth."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from itertools import zip_longest
from pathlib import Path

import numpy as np

from ftprep.manifest import open_run
from ftprep.models import load_tokenizer
from ftprep.stages import perplexity
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import threshold_preview
from ftprep.stages.mask_settings import MaskStageSettings, describe
from ftprep.stages.supervision import KINDS, LOW_WEIGHT, down_weighted, token_kinds, tokens_without_loss
from ftprep.writers import read_shards

STYLE = {"prompt": "\x1b[2m", "masked": "\x1b[1;31m", "low": "\x1b[33m", "reset": "\x1b[0m"}
BRACKETS = {"masked": ("[", "]"), "low": ("{", "}")}


def read_row(folder: Path, row: int) -> dict:
    seen = 0
    for table in read_shards(folder):
        if row < seen + table.num_rows:
            return table.slice(row - seen, 1).to_pylist()[0]
        seen += table.num_rows
    raise FtprepError(f"row {row} does not exist: {folder} has {seen} rows (0 to {seen - 1})")


def rows_mask_rejected(train_dir: Path) -> set[int]:
    """Scored-row indices that `ftprep mask` rejected: training rows are the others, in order."""
    return {json.loads(line)["index"] for line in (train_dir / "rejects.jsonl").read_text(encoding="utf-8").split("\n") if line}


def scored_row_for_training_row(train_dir: Path, scored_dir: Path, row: int) -> dict | None:
    """The scored row a training row came from."""
    if open_run(scored_dir, missing_ok=True) is None:
        return None
    rejected = rows_mask_rejected(train_dir)
    kept, first_row = -1, 0
    for table in read_shards(scored_dir):
        for index in range(table.num_rows):
            kept += first_row + index not in rejected
            if kept == row:
                return table.slice(index, 1).to_pylist()[0]
        first_row += table.num_rows
    return None


def inspect_row(folder: Path, row: int, threshold: float, color: bool) -> str:
    manifest = open_run(folder)
    if manifest.stage == "regen":
        return side_by_side_row(read_row(folder, row), row, shutil.get_terminal_size((100, 24)).columns)
    tokenizer = load_tokenizer(manifest.model.path)
    record = read_row(folder, row)
    ids = np.asarray(record["input_ids"])
    if manifest.stage == "score":
        scored = record
        assistant = np.asarray(record["assistant_mask"], dtype=bool)
        masked = threshold_preview([0, len(ids)], ids, assistant, np.asarray(record["logprobs"], dtype=np.float32),
                                   manifest.tokenizer.end_of_turn_ids, threshold)
        weights = None
        rule = f"perplexity > {threshold:g}, end-of-turn tokens kept, as ftprep mask does"
    else:
        scored = scored_row_for_training_row(folder, Path(manifest.scored.path), row)
        labels = np.asarray(record["labels"])
        assistant = np.asarray(scored["assistant_mask"], dtype=bool) if scored else labels != -100
        weights = np.asarray(record["loss_weights"]) if "loss_weights" in record else None
        masked = tokens_without_loss(assistant, labels, weights)
        rule = describe(manifest.settings_as(MaskStageSettings))

    pieces = [tokenizer.decode([int(token)]) for token in ids]
    kinds = np.array(KINDS, dtype=object)[token_kinds(assistant, masked, down_weighted(assistant, masked, weights))]
    body = "".join(_render(piece, kind, color) for piece, kind in zip(pieces, kinds))

    numbers = [f"row {row}", f"id {visible(record.get('id', scored.get('id') if scored else '?'))}", f"{len(ids)} tokens",
               f"{int(assistant.sum())} assistant", f"{int(masked.sum())} masked ({rule})"]
    if scored is not None:
        ppl = perplexity(scored["logprobs"])[np.asarray(scored["assistant_mask"], dtype=bool)]
        ppl = ppl[~np.isnan(ppl)]
        if len(ppl):
            numbers.append(f"assistant perplexity mean {np.exp(np.mean(np.log(ppl))):.2f}, max {ppl.max():.1f}")
    if weights is not None:
        numbers.append(f"mean weight {weights[assistant].mean():.3f}" if assistant.any() else "no weights")
    legend = (f"dim: prompt, red: masked (no loss: label -100 or weight 0), yellow: weight < {LOW_WEIGHT:g}" if color
              else f"[masked: no loss, label -100 or weight 0]  {{weight < {LOW_WEIGHT:g}}}  prompt and kept tokens plain")
    return " · ".join(numbers) + "\n\n" + body + "\n\n" + legend


def side_by_side_row(record: dict, row: int, width: int) -> str:
    """A regenerated row: each rewritten turn's ground truth beside what was kept."""
    numbers = [f"row {row}", f"id {visible(record['id'])}", f"kept: {record['source']}",
               f"{record['candidates_accepted']} of {record['candidates_tried']} candidates accepted",
               f"perplexity ground truth {record['ground_truth_perplexity']:.2f}, kept {record['kept_perplexity']:.2f}"]
    column = max(20, (width - 3) // 2)
    blocks = []
    for turn in record["rewritten_turns"]:
        kept = record["messages"][turn["index"]]["content"]
        left = _wrapped(turn["ground_truth"], column)
        right = _wrapped(kept, column)
        heading = f"{'ground truth':<{column}} | kept ({turn['source']}), turn {turn['index']}"
        lines = [f"{a:<{column}} | {b}" for a, b in zip_longest(left, right, fillvalue="")]
        blocks.append("\n".join([heading, "-" * len(heading), *lines]))
    prompt = next((m["content"] for m in reversed(record["messages"]) if m["role"] == "user"), "")
    return " · ".join(numbers) + "\n\nprompt: " + visible(prompt) + "\n\n" + "\n\n".join(blocks)


def _wrapped(text: str, width: int) -> list[str]:
    return [visible(line) for paragraph in text.splitlines() or [""] for line in textwrap.wrap(paragraph, width) or [""]]


# Control characters from the data (an escape sequence can clear or retitle a terminal, or hide
# text), shown as escapes instead; newlines and tabs are layout and stay.
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    return CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), str(text))


def _render(piece: str, kind: str, color: bool) -> str:
    piece = visible(piece)
    if kind == "kept":
        return piece
    if color:
        return f"{STYLE[kind]}{piece}{STYLE['reset']}"
    if kind in BRACKETS:
        opening, closing = BRACKETS[kind]
        return f"{opening}{piece}{closing}"
    return piece
