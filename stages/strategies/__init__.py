"""Mask strategies: how scores become labels or weights, one registered object each.

A strategy declares the mask options it reads, what it needs from the scored data (top-k, a
second scoring with --against), the trainers its output suits, and `describe(config)`: the one
sentence the dataset card, the report, `inspect` and `export-config` all print. `config` is a
mask run's settings as a mapping (the `config` of its ftprep.json).

Registered: threshold, quantile, soft, delta, anchor, none (STRATEGIES, in that order).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ftprep.stages import perplexity
from ftprep.stages.anchor import anchor_tokens
from ftprep.stages.errors import FtprepError

# Trainers the training columns are for: hf (with ftprep.trainer) reads loss_weights and KL
# targets; trl, axolotl and llama-factory take input_ids/attention_mask/labels as they are.
TARGETS = ("hf", "trl", "axolotl", "llama-factory")
WEIGHT_FNS = ("gauss", "prob")
# The --against model's logprobs, aligned token for token with `logprobs` (strategy delta).
AGAINST_LOGPROBS = "against_logprobs"


class Strategy:
    name = ""
    summary = ""  # what it does, for --help
    options: tuple[str, ...] = ()  # the mask options it reads
    targets = TARGETS  # the --target values it can write for
    makes_weights = False
    needs_top_k = False
    needs_against = False

    def masked(self, view, candidates: np.ndarray, config: Mapping, context) -> tuple[np.ndarray, np.ndarray | None]:
        """Which tokens lose their label, and each token's weight (None: 1 on every assistant
        token that keeps its label). `context`: what `prepare` computed over the whole dataset."""
        raise NotImplementedError

    def describe(self, config: Mapping) -> str:
        raise NotImplementedError

    def prepare(self, config: Mapping, candidate_perplexities) -> object:
        """Anything the strategy needs from the whole dataset before the first shard; None by default.
        `candidate_perplexities()` yields (perplexities, global row of each) of each shard's candidates."""
        return None

    def needs_dataset_pass(self, config: Mapping) -> bool:
        return False


class Threshold(Strategy):
    name = "threshold"
    summary = "label -100 on assistant tokens with perplexity above --threshold (STM)"
    options = ("threshold",)

    def masked(self, view, candidates, config, context):
        return candidates & (view.perplexity > config["threshold"]), None

    def describe(self, config):
        return f"threshold (STM): label -100 on assistant tokens with perplexity above {config['threshold']:g}"


class Quantile(Strategy):
    name = "quantile"
    summary = "mask the --quantile share of assistant tokens with the highest perplexity, per row or over the dataset"
    options = ("quantile", "scope")

    def needs_dataset_pass(self, config):
        return config["scope"] == "dataset"

    def prepare(self, config, candidate_perplexities):
        if not self.needs_dataset_pass(config):
            return None
        return dataset_quantile(list(candidate_perplexities()), config["quantile"])

    def masked(self, view, candidates, config, context):
        if config["scope"] == "dataset":
            return masked_by_dataset_quantile(view, candidates, context), None
        return masked_by_row_quantile(view, candidates, config["quantile"]), None

    def describe(self, config):
        return (f"quantile: label -100 on the {config['quantile']:.0%} of assistant tokens with the highest perplexity, "
                f"per {config['scope']}")


class Soft(Strategy):
    name = "soft"
    summary = "keep every label and write loss_weights from the perplexity (--weight-fn)"
    options = ("weight_fn", "sigma", "alpha", "min_weight")
    targets = ("hf",)
    makes_weights = True

    def masked(self, view, candidates, config, context):
        return np.zeros(len(view.input_ids), dtype=bool), soft_weights(view, candidates, config)

    def describe(self, config):
        if config["weight_fn"] == "gauss":
            text = f"soft: every assistant token keeps its label, with loss_weights exp(-((ppl-1)/{config['sigma']:g})^2)"
        else:
            text = f"soft: every assistant token keeps its label, with loss_weights p^{config['alpha']:g}"
        if config.get("min_weight"):
            text += f", at least {config['min_weight']:g}"
        return text


class Delta(Strategy):
    name = "delta"
    summary = "label -100 where perplexity under the --against model exceeds this one's by more than --delta"
    options = ("against", "delta")
    needs_against = True

    def masked(self, view, candidates, config, context):
        if view.against_logprobs is None:
            raise ValueError(f"the delta strategy needs the {AGAINST_LOGPROBS} column (the mask command adds it from --against)")
        with np.errstate(invalid="ignore"):  # inf - inf is NaN: both models find the token impossible, no rise
            rise = perplexity(view.against_logprobs) - view.perplexity
        return candidates & (rise > config["delta"]), None

    def describe(self, config):
        return (f"delta: label -100 on assistant tokens whose perplexity under a second model is higher by more than "
                f"{config['delta']:g}")


class Anchor(Strategy):
    name = "anchor"
    summary = "labels only on anchors (tokens the model ranks below its greedy choice), reference top-k as KL targets elsewhere"
    options = ("anchors", "confidence")
    targets = ("hf", "axolotl")
    needs_top_k = True

    def masked(self, view, candidates, config, context):
        keep_eos = config["keep_eos"]
        anchors = anchor_tokens(view.assistant, view.rank, view.end_of_turn, view.offsets, config["anchors"], keep_eos)
        return view.assistant & ~anchors, None

    def describe(self, config):
        which = "the first token of each assistant turn" if config["anchors"] == "first" else "every assistant token"
        return (f"anchor (AnchorLwF): labels only on {which} that the model ranks below its greedy choice "
                f"(confidence {config['confidence']:g}), the reference model's top-k as KL targets on the other assistant tokens")


class Plain(Strategy):
    name = "none"
    summary = "loss on assistant tokens only, the plain SFT baseline"

    def masked(self, view, candidates, config, context):
        return np.zeros(len(view.input_ids), dtype=bool), None

    def describe(self, config):
        return "none: loss on assistant tokens only (plain SFT)"


REGISTRY = {strategy.name: strategy for strategy in (Threshold(), Quantile(), Soft(), Delta(), Anchor(), Plain())}
STRATEGIES = tuple(REGISTRY)


def strategy_named(name: str) -> Strategy:
    if name not in REGISTRY:
        raise FtprepError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    return REGISTRY[name]


def describe(config: Mapping) -> str:
    """One sentence on what a mask run with these settings did."""
    text = strategy_named(config["strategy"]).describe(config)
    if config.get("keep_eos", True):
        text += "; end-of-turn tokens stay supervised"
    return text


def writes_weights(config: Mapping) -> bool:
    """Whether the training columns include loss_weights."""
    if config["target"] != "hf":
        return False
    weights = config.get("weights")
    return weights if weights is not None else strategy_named(config["strategy"]).makes_weights


def check_mask_settings(config: Mapping, scored_config: Mapping) -> None:
    """Every rule on which settings go together, checked before anything is read or written."""
    strategy = strategy_named(config["strategy"])
    target = config["target"]
    if target != "hf" and (strategy.makes_weights or config.get("weights")):
        raise FtprepError(f"--target {target} cannot read loss_weights: use --target hf and train with ftprep.trainer, "
                          "or a hard strategy (threshold, quantile, none)")
    if strategy.needs_top_k and not scored_config.get("top_k"):
        raise FtprepError(f"--strategy {strategy.name} needs the reference model's top-k, which {config['scored']} lacks: "
                          "rescore with ftprep score --top-k 20")
    if target not in strategy.targets:
        raise FtprepError(f"--target {target} cannot read the KL targets of --strategy {strategy.name}: use --target hf "
                          "and train with ftprep.trainer, or --target axolotl (its KD plugin)")
    if strategy.name == "anchor" and target == "axolotl" and config["confidence"] < 1:
        raise FtprepError("--target axolotl takes --confidence 1 only (its KD trainer puts plain cross-entropy on every "
                          "label): use --target hf and train with ftprep.trainer")
    if strategy.needs_against and not config.get("against"):
        raise FtprepError(f"--strategy {strategy.name} needs --against SCORED_B: the same input scored with the second model")
    if config.get("against") and not strategy.needs_against:
        raise FtprepError(f"--against is read only by --strategy delta, not {strategy.name}: drop it or use --strategy delta")


def check_export_target(config: Mapping, folder: str, target: str) -> None:
    """Whether `target` can train on a folder that a mask run with these settings wrote."""
    strategy = strategy_named(config["strategy"])
    if strategy.name == "anchor" and config["target"] == "axolotl":
        if target != "axolotl":
            raise FtprepError(f"{folder} holds KL targets in Axolotl's KD layout: print its config with --target axolotl, "
                              "or rerun ftprep mask --strategy anchor with --target hf for TRL")
    elif strategy.name == "anchor" and target in ("axolotl", "llama-factory"):
        raise FtprepError(f"{folder} holds KL targets in ftprep's layout, which {target} cannot read: "
                          "rerun ftprep mask --strategy anchor with --target axolotl (its KD plugin), or train with TRL")
    elif writes_weights(config) and target in ("axolotl", "llama-factory"):
        raise FtprepError(f"{folder} has loss_weights, which {target} cannot read: rerun ftprep mask with --target {target}")


# -- the math of each strategy, over a shard's flat token arrays ---------------------------


def soft_weights(view, candidates: np.ndarray, config: Mapping) -> np.ndarray:
    """Weight of every token: f(ppl) on candidates, 1 on kept end-of-turn tokens, 0 elsewhere."""
    if config["weight_fn"] == "gauss":
        curve = np.exp(-(((view.perplexity - 1.0) / config["sigma"]) ** 2))
    elif config["weight_fn"] == "prob":
        curve = np.exp(config["alpha"] * view.logprobs.astype(np.float64))
    else:
        raise FtprepError(f"unknown --weight-fn {config['weight_fn']!r}: use one of {', '.join(WEIGHT_FNS)}")
    curve = np.where(np.isnan(curve), 1.0, np.maximum(curve, config["min_weight"]))
    weights = np.where(candidates, curve, 0.0)
    weights[view.assistant & ~candidates] = 1.0
    return weights.astype(np.float32)


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
