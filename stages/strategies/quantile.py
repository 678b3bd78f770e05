"""quantile: no loss on the share q of assistant tokens with the highest perplexity, counted per
row or over the whole dataset (which needs one pass over every shard before the first is masked)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftprep.stages.options import setting
from ftprep.stages.strategies.base import Strategy


@dataclass(frozen=True)
class QuantileOptions:
    quantile: float = setting(0.2, low=0, high=1, low_open=True, high_open=True, help="quantile: share of assistant tokens to mask.")
    scope: str = setting("sample", choices=("sample", "dataset"), help="quantile: per row or over the dataset.")


class Quantile(Strategy):
    name = "quantile"
    summary = "mask the --quantile share of assistant tokens with the highest perplexity, per row or over the dataset"
    Options = QuantileOptions
    looser = ("quantile", "lower")

    def prepare(self, settings, candidate_perplexities):
        if settings.options.scope != "dataset":
            return None
        return dataset_quantile(list(candidate_perplexities()), settings.options.quantile)

    def masked(self, view, candidates, settings, context):
        if settings.options.scope == "dataset":
            return masked_by_dataset_quantile(view, candidates, context), None
        return masked_by_row_quantile(view, candidates, settings.options.quantile), None

    def describe(self, settings):
        options = settings.options
        return f"quantile: label -100 on the {options.quantile:.0%} of assistant tokens with the highest perplexity, per {options.scope}"


def masked_by_row_quantile(view, candidates: np.ndarray, quantile: float) -> np.ndarray:
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


@dataclass
class DatasetQuantile:
    """For --scope dataset: mask perplexities above `cutoff`, and the first `ties` candidates
    equal to it in dataset order; `ties_before_row[r]` counts those in the rows before row r."""

    cutoff: float
    ties: int
    ties_before_row: np.ndarray


def dataset_quantile(shards: list[tuple[np.ndarray, np.ndarray]], quantile: float) -> DatasetQuantile:
    """One pass over every shard's candidates, given as (perplexities, global row of each)."""
    ppls = [np.nan_to_num(ppl, nan=-np.inf) for ppl, _ in shards]
    everything = np.concatenate(ppls) if ppls else np.zeros(0)
    rows = np.concatenate([rows for _, rows in shards]) if shards else np.zeros(0, np.int64)
    row_count = int(rows.max()) + 1 if len(rows) else 0
    to_mask = int(np.floor(quantile * len(everything)))
    if to_mask == 0:
        return DatasetQuantile(np.inf, 0, np.zeros(row_count + 1, np.int64))
    cutoff = float(np.partition(everything, len(everything) - to_mask)[len(everything) - to_mask])
    ties = to_mask - int((everything > cutoff).sum())
    tied_per_row = np.bincount(rows[everything == cutoff], minlength=row_count)
    return DatasetQuantile(cutoff, ties, np.concatenate([[0], np.cumsum(tied_per_row)]))


def masked_by_dataset_quantile(view, candidates: np.ndarray, quantile: DatasetQuantile) -> np.ndarray:
    ppl = np.nan_to_num(view.perplexity, nan=-np.inf)
    masked = candidates & (ppl > quantile.cutoff)
    tied = np.flatnonzero(candidates & (ppl == quantile.cutoff))
    local_rows = view.row_of_token[tied]
    order_in_row = np.arange(len(tied)) - np.searchsorted(local_rows, local_rows, side="left")
    dataset_order = quantile.ties_before_row[view.row_index[local_rows]] + order_in_row
    masked[tied[dataset_order < quantile.ties]] = True
    return masked
