"""Mask stage: scores in, training columns out (input_ids, attention_mask, labels, loss_weights).

Everything works on the flat token arrays of a whole shard at once (numpy over Arrow
buffers); rows are only touched as offsets. What each strategy does is in stages.strategies
(the stage asks the strategy, never its name); which tokens count as supervised or masked is
stages.supervision's rule; end-of-turn tokens stay supervised with weight 1 unless keep_eos is off.
Each shard counts what it removes of what rows share (stages.shared_tokens), judged over the
dataset by the command; with keep_shared, the tokens such a judgement named keep their labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ftprep.stages import flat_values, perplexity, row_offsets
from ftprep.stages.errors import COMMAND_LINE, Setting
from ftprep.stages.mask_settings import MaskStageSettings, writes_weights
from ftprep.stages.shared_tokens import shared_token_counts
from ftprep.stages.strategies import AGAINST_LOGPROBS, strategy_named
from ftprep.stages.strategies.threshold import ThresholdOptions
from ftprep.stages.supervision import IGNORE_INDEX, supervised_tokens, tokens_without_loss, training_labels

__all__ = ["IGNORE_INDEX", "MaskStage", "TokenView", "training_schema"]
# Soft weights are counted per shard on a grid of 1 / WEIGHT_BINS over [0, 1]; the quantiles
# that stats.json reports come from the merged counts, to within half a step (0.0005).
WEIGHT_BINS = 1000
WEIGHT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SHARED_COUNTS = "shared_token_counts"  # a shard's stats: stages.shared_tokens' counts, merged by key
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
    row_index: np.ndarray | None = None  # per row, its `index` (its row number in the whole scored dataset)

    @classmethod
    def of(cls, table: pa.Table, end_of_turn_ids) -> "TokenView":
        flat_ids = flat_values(table, "input_ids")
        assistant = flat_values(table, "assistant_mask").astype(bool)
        return cls(
            offsets=row_offsets(table),
            input_ids=flat_ids,
            assistant=assistant,
            logprobs=flat_values(table, "logprobs").astype(np.float32),
            end_of_turn=end_of_turn_tokens(flat_ids, assistant, end_of_turn_ids),
            against_logprobs=(flat_values(table, AGAINST_LOGPROBS).astype(np.float32)
                              if AGAINST_LOGPROBS in table.column_names else None),
            rank=flat_values(table, "rank") if "rank" in table.column_names else None,
            row_index=table.column("index").to_numpy() if "index" in table.column_names else None,
        )

    @property
    def row_of_token(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), np.diff(self.offsets))

    @property
    def perplexity(self) -> np.ndarray:
        return perplexity(self.logprobs)


def end_of_turn_tokens(input_ids: np.ndarray, assistant: np.ndarray, end_of_turn_ids) -> np.ndarray:
    """Assistant tokens that end a turn (the ids the tokenizer found there, from the scored manifest)."""
    return assistant & np.isin(input_ids, np.asarray(list(end_of_turn_ids), dtype=np.int64))


def threshold_preview(offsets, input_ids, assistant, logprobs, end_of_turn_ids, threshold: float) -> np.ndarray:
    """On scores alone: the tokens `ftprep mask --strategy threshold --threshold T` would mask,
    by the mask's own rule (end-of-turn tokens stay supervised, as --keep-eos does by default)."""
    ids, assistant = np.asarray(input_ids), np.asarray(assistant, dtype=bool)
    view = TokenView(offsets=np.asarray(offsets), input_ids=ids, assistant=assistant, logprobs=np.asarray(logprobs, dtype=np.float32),
                     end_of_turn=end_of_turn_tokens(ids, assistant, end_of_turn_ids))
    settings = MaskStageSettings(strategy="threshold", options=ThresholdOptions(threshold=threshold))
    masked, _ = strategy_named("threshold").masked(view, mask_candidates(view, keep_eos=True), settings, None)
    return masked


def mask_candidates(view: TokenView, keep_eos: bool) -> np.ndarray:
    """Assistant tokens a strategy may mask or down-weight."""
    return view.assistant & ~view.end_of_turn if keep_eos else view.assistant.copy()


def candidate_perplexities(table: pa.Table, end_of_turn_ids, keep_eos: bool) -> tuple[np.ndarray, np.ndarray]:
    """A shard's mask candidates as (perplexity, the `index` of each one's row)."""
    view = TokenView.of(table, end_of_turn_ids)
    candidates = mask_candidates(view, keep_eos)
    return view.perplexity[candidates], view.row_index[view.row_of_token[candidates]]


def perplexity_histogram(perplexities: np.ndarray, edges=PPL_BIN_EDGES) -> dict[str, int]:
    """Token counts per perplexity bin, keyed "lo-hi" (the last bin is open: "1000-inf")."""
    counts, _ = np.histogram(perplexities, bins=[*edges, np.inf])
    labels = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges, [*edges[1:], np.inf])]
    return dict(zip(labels, counts.tolist()))


def weight_histogram(weights: np.ndarray) -> dict[str, int]:
    """Counts of weights rounded to the nearest 1 / WEIGHT_BINS (0 and 1 stay exact), keyed by
    that step's number, empty steps left out: shards add up key by key (merge_counters)."""
    steps = np.rint(np.clip(np.asarray(weights, dtype=np.float64), 0.0, 1.0) * WEIGHT_BINS).astype(np.int64)
    found, counts = np.unique(steps, return_counts=True)
    return {str(int(step)): int(count) for step, count in zip(found, counts)}


def weight_quantiles(histogram: Mapping[str, int], quantiles=WEIGHT_QUANTILES) -> dict[str, float]:
    """Quantiles of the weights a weight_histogram counted, as {"p5": ..., "p50": ...}: the
    weight (to within 0.0005) that a share q of the weights is at or below."""
    steps = np.array(sorted(int(step) for step in histogram), dtype=np.int64)
    if not len(steps):
        return {}
    cumulative = np.cumsum([histogram[str(step)] for step in steps])
    return {f"p{round(q * 100)}": float(steps[np.searchsorted(cumulative, q * cumulative[-1], side="left")] / WEIGHT_BINS)
            for q in quantiles}


def training_schema(settings: MaskStageSettings) -> pa.Schema:
    """The training columns a mask run with these settings writes."""
    fields = [("input_ids", pa.list_(pa.int32())), ("attention_mask", pa.list_(pa.int8())), ("labels", pa.list_(pa.int32()))]
    if writes_weights(settings):
        fields.append(("loss_weights", pa.list_(pa.float32())))
    fields += list(settings.rule.columns(settings).items())
    return pa.schema(fields)


@dataclass
class MaskStage:
    """Scored rows (with their `index` in the scored dataset) in; training rows out.
    `settings`: the stage's own; `context`: what the strategy's `prepare` computed over the whole
    dataset (dataset-scope quantiles); `kept_ids`: with keep_shared, the token ids of what the mask
    would remove from what most rows share (the command's pass over the dataset), which keep their labels."""

    settings: MaskStageSettings
    end_of_turn_ids: list[int]
    context: object = None
    histogram_edges: tuple = field(default=PPL_BIN_EDGES)
    kept_ids: tuple[int, ...] = ()

    def __post_init__(self):
        self.strategy = self.settings.rule
        self.schema = training_schema(self.settings)

    def _masked(self, view: TokenView) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """(candidates, masked, the strategy's weights, the masked tokens keep_shared gave back their labels)."""
        candidates = mask_candidates(view, self.settings.keep_eos)
        masked, weights = self.strategy.masked(view, candidates, self.settings, self.context)
        # keep_shared goes with hard strategies only (check_mask_settings): no weights to mend.
        kept = masked & candidates & np.isin(view.input_ids, np.asarray(self.kept_ids, dtype=np.int64))
        return candidates, masked & ~kept, weights, kept

    def shared_counts(self, table: pa.Table) -> dict:
        """What this mask removes of what one shard's rows share (the pass keep_shared makes first)."""
        view = TokenView.of(table, self.end_of_turn_ids)
        candidates, masked, weights, _ = self._masked(view)
        no_loss = tokens_without_loss(view.assistant, training_labels(view.input_ids, view.assistant, masked), weights)
        return shared_token_counts(view.input_ids, candidates, no_loss, view.row_of_token, table.num_rows)

    def __call__(self, table: pa.Table, rejects) -> tuple[pa.Table, dict]:
        settings = self.settings
        view = TokenView.of(table, self.end_of_turn_ids)
        candidates, masked, weights, kept = self._masked(view)
        if weights is None:
            weights = (view.assistant & ~masked).astype(np.float32)
        supervised = supervised_tokens(view.assistant, masked, weights)
        labels = training_labels(view.input_ids, view.assistant, masked)
        extra = self.strategy.extra_outputs(table, view, masked, settings)
        if extra is not None and extra.supervised is not None:
            supervised |= extra.supervised

        kept_per_row = np.bincount(view.row_of_token[supervised], minlength=table.num_rows)
        keep_row = kept_per_row >= settings.min_kept
        ids = table.column("id").to_pylist()
        # rejects.jsonl is data: it names the setting as the command line does, whoever ran the mask.
        min_kept = COMMAND_LINE.setting(Setting("min_kept"))
        for row in np.flatnonzero(~keep_row):
            rejects.add(view.row_index[row], ids[row], "mask",
                        f"only {int(kept_per_row[row])} supervised tokens left ({min_kept} {settings.min_kept})",
                        kind=f"fewer supervised tokens than {min_kept}")
        output = self._training_table(view, labels, weights, extra.columns if extra else {}).filter(pa.array(keep_row))
        # One meaning of "masked" everywhere (stats, report, card, inspect): no loss, because
        # the label is -100 or the weight is 0 (soft weights underflow to exactly 0).
        no_loss = tokens_without_loss(view.assistant, labels, weights)
        stats = self._stats(view, no_loss, supervised, weights)
        stats[SHARED_COUNTS] = shared_token_counts(view.input_ids, candidates, no_loss, view.row_of_token, table.num_rows)
        if settings.keep_shared:
            stats["kept_shared_tokens"] = int(kept.sum())
        if self.strategy.makes_weights:
            stats["zero_weight_tokens"] = int((view.assistant & (weights == 0)).sum())
            stats["weight_histogram"] = weight_histogram(weights[view.assistant])
        if extra is not None:
            stats.update(extra.stats)
        return output, stats

    def _training_table(self, view: TokenView, labels: np.ndarray, weights: np.ndarray, extra: dict) -> pa.Table:
        offsets = pa.array(view.offsets.astype(np.int32))
        values = {"input_ids": view.input_ids, "attention_mask": np.ones(len(view.input_ids)), "labels": labels,
                  "loss_weights": weights}
        return pa.table(
            [extra[field.name] if field.name in extra else
             pa.ListArray.from_arrays(offsets, pa.array(values[field.name], field.type.value_type)) for field in self.schema],
            schema=self.schema,
        )

    def _stats(self, view, masked, supervised, weights) -> dict:
        assistant_ppl = view.perplexity[view.assistant & ~np.isnan(view.logprobs)]
        return {
            "assistant_tokens": int(view.assistant.sum()),
            "masked_tokens": int(masked.sum()),
            "supervised_tokens": int(supervised.sum()),
            "weight_sum": float(weights[view.assistant].sum()),
            "perplexity_histogram": perplexity_histogram(assistant_ppl, self.histogram_edges),
        }
