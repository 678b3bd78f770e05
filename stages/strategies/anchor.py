"""Anchors and reference distributions (AnchorLwF): which tokens learn, which tokens keep the model.

An anchor is a trainable assistant token that the reference model would not have produced
greedily from the ground-truth prefix (rank > 1). Anchors get labels (cross-entropy, softened by
a confidence c_t); every other scored assistant token gets no label but keeps the reference
model's top-k distribution as a KL target, so training learns the corrections and leaves the
rest of the model's behaviour where it was.

Two layouts of the KL targets:
- hf (ftprep.trainer.anchor_kl_loss): `ref_topk_ids`, `ref_topk_logprobs`, `kl_mask`,
  `anchor_confidence`, aligned like `labels` (position i: the distribution of token i given the
  tokens before it, as scored), the reference logprobs as scored (raw, not renormalized).
- axolotl (its KD plugin): `target_token_ids`, `target_logprobs`, `target_mask`, where position
  i holds the distribution of token i + 1 (Axolotl pairs hidden state i with target i), the
  logprobs renormalized over the top-k, and the mask repeated over the K entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ftprep.stages import nested_entries, nested_list_array
from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.options import setting
from ftprep.stages.strategies.base import ExtraOutputs, Strategy

ANCHOR_RULES = ("first", "all")
# The hf layout, read by ftprep.trainer.AnchorKLCollator.
HF_COLUMNS = {
    "ref_topk_ids": pa.list_(pa.list_(pa.int32())),
    "ref_topk_logprobs": pa.list_(pa.list_(pa.float16())),
    "kl_mask": pa.list_(pa.int8()),
    "anchor_confidence": pa.list_(pa.float32()),
}
# The layout of Axolotl's KD plugin (axolotl/integrations/kd: DataCollatorForKD, AxolotlKDTrainer).
AXOLOTL_COLUMNS = {
    "target_token_ids": pa.list_(pa.list_(pa.int32())),
    "target_logprobs": pa.list_(pa.list_(pa.float16())),
    "target_mask": pa.list_(pa.list_(pa.int8())),
}


def turn_ids(assistant: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per token, the number of the assistant turn (a run of assistant tokens within a row) it is in."""
    starts = assistant.copy()
    starts[1:] &= ~assistant[:-1]
    row_starts = offsets[:-1][np.diff(offsets) > 0]
    starts[row_starts] = assistant[row_starts]  # a run never continues into the next row
    return np.cumsum(starts) - 1


def first_per_turn(candidates: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """The first candidate token of each turn."""
    index = np.flatnonzero(candidates)
    _, first = np.unique(turns[index], return_index=True)
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[index[first]] = True
    return chosen


def anchor_tokens(assistant: np.ndarray, rank: np.ndarray, end_of_turn: np.ndarray, offsets: np.ndarray,
                  rule: str, keep_eos: bool) -> np.ndarray:
    """Assistant tokens the reference model ranks below its greedy choice (rank > 1): the first of
    each turn (rule "first", AnchorLwF's annotation rule) or all of them ("all", the same rule
    applied again after each correction). With keep_eos, end-of-turn tokens are always anchors and
    never count as a turn's first wrong token, so the model keeps learning where to stop."""
    wrong = assistant & (rank > 1)
    if keep_eos:
        wrong &= ~end_of_turn
    anchors = first_per_turn(wrong, turn_ids(assistant, offsets)) if rule == "first" else wrong
    return anchors | end_of_turn if keep_eos else anchors


def hf_columns(table: pa.Table, offsets: np.ndarray, kl_mask: np.ndarray, anchors: np.ndarray,
               confidence: float) -> dict[str, pa.Array]:
    """The hf layout: the reference top-k where there is a loss (anchors need it when c_t < 1)."""
    entry_of_token, ids = nested_entries(table, "topk_ids")
    _, logprobs = nested_entries(table, "topk_logprobs")
    kept = np.where(kl_mask | anchors, entry_of_token, -1)
    list_offsets = pa.array(offsets.astype(np.int32))
    return {
        "ref_topk_ids": nested_list_array(offsets, kept, ids, pa.int32()),
        "ref_topk_logprobs": nested_list_array(offsets, kept, logprobs, pa.float16()),
        "kl_mask": pa.ListArray.from_arrays(list_offsets, pa.array(kl_mask.astype(np.int8))),
        "anchor_confidence": pa.ListArray.from_arrays(list_offsets, pa.array(np.where(anchors, confidence, 0.0).astype(np.float32))),
    }


def renormalized(logprobs: np.ndarray) -> np.ndarray:
    """Logprobs renormalized over each row (the top-k), in float32."""
    logprobs = logprobs.astype(np.float32)
    if not logprobs.size:
        return logprobs
    top = logprobs.max(axis=1, keepdims=True)
    return logprobs - (top + np.log(np.exp(logprobs - top).sum(axis=1, keepdims=True)))


def shifted_left(entry_of_token: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """entry_of_token moved one position earlier within each row; a row's last token gets none."""
    shifted = np.full(len(entry_of_token), -1, dtype=np.int64)
    shifted[:-1] = entry_of_token[1:]
    row_ends = offsets[1:][np.diff(offsets) > 0] - 1
    shifted[row_ends] = -1
    return shifted


def axolotl_columns(table: pa.Table, offsets: np.ndarray, kl_mask: np.ndarray) -> dict[str, pa.Array]:
    """The KD plugin's layout: at position i the KL target of token i + 1, renormalized over the top-k."""
    entry_of_token, ids = nested_entries(table, "topk_ids")
    _, logprobs = nested_entries(table, "topk_logprobs")
    source = shifted_left(np.where(kl_mask, entry_of_token, -1), offsets)
    ones = np.ones(ids.shape, dtype=np.int8)
    return {
        "target_token_ids": nested_list_array(offsets, source, ids, pa.int32()),
        "target_logprobs": nested_list_array(offsets, source, renormalized(logprobs), pa.float16()),
        "target_mask": nested_list_array(offsets, source, ones, pa.int8()),
    }


@dataclass(frozen=True)
class AnchorOptions:
    anchors: str = setting("all", choices=ANCHOR_RULES,
                           help="anchor: label every assistant token the model ranks below its greedy choice (the "
                                "paper's rule under teacher forcing), or only the first of each assistant turn.")
    confidence: float = setting(1.0, low=0, high=1, low_open=True,
                                help="anchor: c_t, the anchors' target is c_t x their label + (1 - c_t) x the reference distribution.")


class Anchor(Strategy):
    name = "anchor"
    summary = "labels only on anchors (tokens the model ranks below its greedy choice), reference top-k as KL targets elsewhere"
    Options = AnchorOptions
    targets = ("hf", "axolotl")
    needs_top_k = True

    def masked(self, view, candidates, settings, context):
        anchors = anchor_tokens(view.assistant, view.rank, view.end_of_turn, view.offsets, settings.options.anchors, settings.keep_eos)
        return view.assistant & ~anchors, None

    def describe(self, settings):
        options = settings.options
        which = "the first token of each assistant turn" if options.anchors == "first" else "every assistant token"
        return (f"anchor (AnchorLwF): labels only on {which} that the model ranks below its greedy choice "
                f"(confidence {options.confidence:g}), the reference model's top-k as KL targets on the other assistant tokens")

    def columns(self, settings):
        return AXOLOTL_COLUMNS if settings.target == "axolotl" else HF_COLUMNS

    def extra_outputs(self, table, view, masked, settings):
        # Every scored assistant token that is not an anchor keeps the reference distribution.
        kl_mask = masked & (view.rank > 0)
        anchors = ~masked & view.assistant
        if settings.target == "axolotl":
            columns = axolotl_columns(table, view.offsets, kl_mask)
        else:
            columns = hf_columns(table, view.offsets, kl_mask, anchors, settings.options.confidence)
        return ExtraOutputs(columns, supervised=kl_mask,
                            stats={"anchor_tokens": int((view.assistant & ~masked).sum()), "kl_tokens": int(kl_mask.sum())})

    def finish_stats(self, stats):
        if stats.get("assistant_tokens") and "anchor_tokens" in stats:
            stats["anchor_share"] = stats["anchor_tokens"] / stats["assistant_tokens"]

    def check(self, settings):
        strategy = Setting("strategy", self.name)
        if settings.target not in self.targets:
            raise SettingError("{target} cannot read the KL targets of {strategy}: use {hf} and train with ftprep.trainer, "
                               "or {axolotl} (its KD plugin)", field="target", target=Setting("target", settings.target),
                               strategy=strategy, hf=Setting("target", "hf"), axolotl=Setting("target", "axolotl"))
        if settings.target == "axolotl" and settings.options.confidence < 1:
            raise SettingError("{axolotl} takes {confidence} only (its KD trainer puts plain cross-entropy on every "
                               "label): use {hf} and train with ftprep.trainer", field="confidence",
                               axolotl=Setting("target", "axolotl"), confidence=Setting("confidence", 1),
                               hf=Setting("target", "hf"))

    def check_export(self, settings, folder, target):
        rerun = Setting("strategy", self.name, command="mask")
        if settings.target == "axolotl":
            if target != "axolotl":
                raise SettingError("{folder} holds KL targets in Axolotl's KD layout: print its config with {axolotl}, "
                                   "or rerun {rerun} with {hf} for TRL", field="target", folder=folder,
                                   axolotl=Setting("target", "axolotl"), rerun=rerun, hf=Setting("target", "hf"))
        elif target in ("axolotl", "llama-factory"):
            raise SettingError("{folder} holds KL targets in ftprep's layout, which {target} cannot read: "
                               "rerun {rerun} with {axolotl} (its KD plugin), or train with TRL", field="target",
                               folder=folder, target=target, rerun=rerun, axolotl=Setting("target", "axolotl"))
