"""Mask stage: scores in, training columns out (input_ids, attention_mask, labels, loss_weights).

Everything works on the flat token arrays of a whole shard at once (numpy over Arrow
buffers); rows are only touched as offsets.

Strategies:
- threshold: STM, label -100 on assistant tokens with perplexity above the threshold.
- quantile:  the share q of assistant tokens with the highest perplexity, per row or over the dataset.
- soft:      every assistant token keeps its label and gets a weight from its perplexity.
- delta:     assistant tokens whose perplexity rose by more than `delta` from this scoring to a
             second one of the same rows under another model (the STM authors' "dpf" variant);
             the runner puts the second model's logprobs beside the first in `against_logprobs`.
- anchor:    AnchorLwF: only anchors (rank > 1, see stages.anchor) keep labels; the other scored
             assistant tokens keep the reference top-k as KL targets (`kl_mask`).
- none:      assistant tokens only (the plain SFT baseline).
End-of-turn tokens stay supervised with weight 1 unless keep_eos is off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ftprep.config import MaskConfig
from ftprep.stages import flat_values, perplexity, row_offsets
from ftprep.stages.anchor import AXOLOTL_COLUMNS, HF_COLUMNS, anchor_tokens, axolotl_columns, hf_columns

STRATEGIES = ("threshold", "quantile", "soft", "delta", "anchor", "none")
# The --against model's logprobs, aligned token for token with `logprobs` (strategy delta).
AGAINST_LOGPROBS = "against_logprobs"
# Trainers that take input_ids/attention_mask/labels as they are, and whose batching breaks on
# any other column; only `hf` (with ftprep.trainer) reads loss_weights.
TARGETS = ("hf", "trl", "axolotl", "llama-factory")
WEIGHT_FNS = ("gauss", "prob")
IGNORE_INDEX = -100
# Perplexity histogram edges: fine below the usual thresholds, coarse in the tail.
PPL_BIN_EDGES = (1.0, 1.1, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0)


@dataclass
class TokenView:
    """Flat per-token arrays of one shard, and where each row starts."""

    offsets: np.ndarray
    input_ids: np.ndarray
    assistant: np.ndarray  # bool
    logprobs: np.ndarray  # float32, NaN where unscored
    end_of_turn: np.ndarray  # bool, assistant end-of-turn tokens
    against_logprobs: np.ndarray | None = None  # float32, the --against model's, when the table has them
    rank: np.ndarray | None = None  # int32, 1 = the model's greedy choice, 0 where unscored

    @classmethod
    def of(cls, table: pa.Table, end_of_turn_ids) -> "TokenView":
        flat_ids = flat_values(table, "input_ids")
        assistant = flat_values(table, "assistant_mask").astype(bool)
        return cls(
            offsets=row_offsets(table),
            input_ids=flat_ids,
            assistant=assistant,
            logprobs=flat_values(table, "logprobs").astype(np.float32),
            end_of_turn=assistant & np.isin(flat_ids, np.asarray(list(end_of_turn_ids), dtype=np.int64)),
            against_logprobs=(flat_values(table, AGAINST_LOGPROBS).astype(np.float32)
                              if AGAINST_LOGPROBS in table.column_names else None),
            rank=flat_values(table, "rank") if "rank" in table.column_names else None,
        )

    @property
    def row_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    @property
    def perplexity(self) -> np.ndarray:
        return perplexity(self.logprobs)


def mask_candidates(view: TokenView, keep_eos: bool) -> np.ndarray:
    """Assistant tokens a strategy may mask or down-weight."""
    return view.assistant & ~view.end_of_turn if keep_eos else view.assistant.copy()


@dataclass
class DatasetQuantile:
    """For --scope dataset: mask perplexities above `cutoff`, plus `ties[shard]` of those equal to it."""

    cutoff: float
    ties: list[int]


def dataset_quantile(candidate_ppls: list[np.ndarray], quantile: float) -> DatasetQuantile:
    """One pass over every shard's candidate perplexities: the global cutoff and each shard's share of ties."""
    ppls = [np.nan_to_num(p, nan=-np.inf) for p in candidate_ppls]
    everything = np.concatenate(ppls) if ppls else np.zeros(0)
    to_mask = int(np.floor(quantile * len(everything)))
    if to_mask == 0:
        return DatasetQuantile(np.inf, [0] * len(ppls))
    cutoff = float(np.partition(everything, len(everything) - to_mask)[len(everything) - to_mask])
    ties_left = to_mask - int((everything > cutoff).sum())
    ties = []
    for shard in ppls:
        take = min(ties_left, int((shard == cutoff).sum()))
        ties.append(take)
        ties_left -= take
    return DatasetQuantile(cutoff, ties)


def masked_by_threshold(view: TokenView, candidates: np.ndarray, threshold: float) -> np.ndarray:
    return candidates & (view.perplexity > threshold)


def masked_by_delta(view: TokenView, candidates: np.ndarray, delta: float) -> np.ndarray:
    """Candidates whose perplexity under the --against model exceeds this one by more than delta."""
    if view.against_logprobs is None:
        raise ValueError(f"the delta strategy needs the {AGAINST_LOGPROBS} column (run_mask adds it from --against)")
    with np.errstate(invalid="ignore"):  # inf - inf is NaN: both models find the token impossible, no rise
        rise = perplexity(view.against_logprobs) - view.perplexity
    return candidates & (rise > delta)


def masked_by_row_quantile(view: TokenView, candidates: np.ndarray, quantile: float) -> np.ndarray:
    """In each row, the floor(q * n) candidates with the highest perplexity (earlier token first on ties)."""
    index = np.flatnonzero(candidates)
    rows = view.row_of_token[index]
    ppl = np.nan_to_num(view.perplexity[index], nan=-np.inf)
    order = np.lexsort((index, -ppl, rows))  # by row, then perplexity descending, then position
    sorted_rows = rows[order]
    per_row = np.bincount(rows, minlength=len(view.offsets) - 1)
    group_start = np.concatenate([[0], np.cumsum(per_row)])[sorted_rows]
    rank_in_row = np.arange(len(order)) - group_start
    limit = np.floor(quantile * per_row).astype(np.int64)[sorted_rows]
    masked = np.zeros(len(view.input_ids), dtype=bool)
    masked[index[order[rank_in_row < limit]]] = True
    return masked


def masked_by_dataset_quantile(view: TokenView, candidates: np.ndarray, cutoff: float, ties: int) -> np.ndarray:
    ppl = np.nan_to_num(view.perplexity, nan=-np.inf)
    masked = candidates & (ppl > cutoff)
    tied = np.flatnonzero(candidates & (ppl == cutoff))
    masked[tied[:ties]] = True
    return masked


def soft_weights(view: TokenView, candidates: np.ndarray, config: MaskConfig) -> np.ndarray:
    """Weight of every token: f(ppl) on candidates, 1 on kept end-of-turn tokens, 0 elsewhere."""
    if config.weight_fn == "gauss":
        curve = np.exp(-(((view.perplexity - 1.0) / config.sigma) ** 2))
    else:
        curve = np.exp(config.alpha * view.logprobs.astype(np.float64))
    curve = np.where(np.isnan(curve), 1.0, np.maximum(curve, config.min_weight))
    weights = np.where(candidates, curve, 0.0)
    weights[view.assistant & ~candidates] = 1.0
    return weights.astype(np.float32)


def perplexity_histogram(perplexities: np.ndarray, edges=PPL_BIN_EDGES) -> dict[str, int]:
    """Token counts per perplexity bin, keyed "lo-hi" (the last bin is open: "1000-inf")."""
    counts, _ = np.histogram(perplexities, bins=[*edges, np.inf])
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, [*edges[1:], np.inf])]
    return dict(zip(labels, counts.tolist()))


@dataclass
class MaskStage:
    config: MaskConfig
    end_of_turn_ids: list[int]
    dataset_cutoff: DatasetQuantile | None = None
    histogram_edges: tuple = field(default=PPL_BIN_EDGES)

    @property
    def writes_weights(self) -> bool:
        if self.config.target != "hf":
            return False
        return self.config.weights if self.config.weights is not None else self.config.strategy == "soft"

    def __call__(self, table: pa.Table, shard: int = 0, first_row: int = 0) -> tuple[pa.Table, list[dict], dict]:
        """Mask one shard; `first_row` is the shard's first row in the scored dataset (for rejects)."""
        view = TokenView.of(table, self.end_of_turn_ids)
        candidates = mask_candidates(view, self.config.keep_eos)
        masked, weights = self._apply(view, candidates, shard)
        supervised = view.assistant & ~masked & (weights > 0)
        labels = np.where(view.assistant & ~masked, view.input_ids, IGNORE_INDEX).astype(np.int32)
        extra, kl_mask = {}, None
        if self.config.strategy == "anchor":
            # Every scored assistant token that is not an anchor keeps the reference distribution.
            kl_mask = masked & (view.rank > 0)
            supervised |= kl_mask
            extra = self._kl_columns(table, view, kl_mask, ~masked & view.assistant)

        kept_per_row = np.bincount(view.row_of_token[supervised], minlength=table.num_rows)
        keep_row = kept_per_row >= self.config.min_kept
        ids = table.column("id").to_pylist()
        rejects = [
            {"index": first_row + int(row), "id": ids[row], "stage": "mask",
             "reason": f"only {int(kept_per_row[row])} supervised tokens left (--min-kept {self.config.min_kept})"}
            for row in np.flatnonzero(~keep_row)
        ]
        output = self._training_table(view, labels, weights, extra).filter(pa.array(keep_row))
        stats = self._stats(view, masked, supervised, weights, keep_row, len(rejects))
        if kl_mask is not None:
            stats.update(anchor_tokens=int((view.assistant & ~masked).sum()), kl_tokens=int(kl_mask.sum()))
        return output, rejects, stats

    def _apply(self, view: TokenView, candidates: np.ndarray, shard: int):
        strategy = self.config.strategy
        no_mask = np.zeros(len(view.input_ids), dtype=bool)
        if strategy == "soft":
            return no_mask, soft_weights(view, candidates, self.config)
        if strategy == "threshold":
            masked = masked_by_threshold(view, candidates, self.config.threshold)
        elif strategy == "quantile" and self.config.scope == "dataset":
            masked = masked_by_dataset_quantile(view, candidates, self.dataset_cutoff.cutoff, self.dataset_cutoff.ties[shard])
        elif strategy == "quantile":
            masked = masked_by_row_quantile(view, candidates, self.config.quantile)
        elif strategy == "delta":
            masked = masked_by_delta(view, candidates, self.config.delta)
        elif strategy == "anchor":
            masked = view.assistant & ~anchor_tokens(view.assistant, view.rank, view.end_of_turn, view.offsets,
                                                     self.config.anchors, self.config.keep_eos)
        else:
            masked = no_mask
        return masked, (view.assistant & ~masked).astype(np.float32)

    @property
    def schema(self) -> pa.Schema:
        """The training columns this stage writes (also the schema of an output with no rows)."""
        fields = [("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())), ("labels", pa.list_(pa.int32()))]
        if self.writes_weights:
            fields.append(("loss_weights", pa.list_(pa.float32())))
        if self.config.strategy == "anchor":
            fields += list((AXOLOTL_COLUMNS if self.config.target == "axolotl" else HF_COLUMNS).items())
        return pa.schema(fields)

    def _kl_columns(self, table: pa.Table, view: TokenView, kl_mask: np.ndarray, anchors: np.ndarray) -> dict[str, pa.Array]:
        if self.config.target == "axolotl":
            return axolotl_columns(table, view.offsets, kl_mask)
        return hf_columns(table, view.offsets, kl_mask, anchors, self.config.confidence)

    def _training_table(self, view: TokenView, labels: np.ndarray, weights: np.ndarray, extra: dict) -> pa.Table:
        offsets = pa.array(view.offsets.astype(np.int32))
        values = {"input_ids": view.input_ids, "attention_mask": np.ones(len(view.input_ids)), "labels": labels,
                  "loss_weights": weights}
        schema = self.schema
        return pa.table(
            [extra[field.name] if field.name in extra else
             pa.ListArray.from_arrays(offsets, pa.array(values[field.name], field.type.value_type)) for field in schema],
            schema=schema,
        )

    def _stats(self, view, masked, supervised, weights, keep_row, rejected) -> dict:
        assistant_ppl = view.perplexity[view.assistant & ~np.isnan(view.logprobs)]
        reasons = {"fewer supervised tokens than --min-kept": rejected} if rejected else {}
        return {
            "rows_in": len(keep_row),
            "rows_out": int(keep_row.sum()),
            "rows_rejected": rejected,
            "reject_reasons": reasons,
            "assistant_tokens": int(view.assistant.sum()),
            "masked_tokens": int(masked.sum()),
            "supervised_tokens": int(supervised.sum()),
            "weight_sum": float(weights[view.assistant].sum()),
            "perplexity_histogram": perplexity_histogram(assistant_ppl, self.histogram_edges),
        }
