"""What a mask strategy is: one class that says everything about itself.

A strategy declares
- its options: `Options`, a frozen dataclass whose fields are declared with
  ftprep.stages.options.setting (name, default, range, help, once); `ftprep mask`'s click options,
  `ftprep.mask(...)`'s keyword arguments and the docs take them from there. Option names are
  shared by every strategy's options and the mask settings, so each is unique.
- what it needs: `needs_top_k` (the scored dataset's top-k, `ftprep score --top-k`),
  `needs_against` (a second scoring, read from its own `against` option);
- what it writes: `makes_weights` (loss_weights), `targets` (the trainers it can write for),
  `columns(settings)` and `extra_outputs(...)` (columns of its own, per target);
- its checks: `check(settings)` and `check_export(settings, folder, target)`;
- what it does: `masked(...)`, with `prepare(...)` for a look at the whole dataset first;
- what it says: `summary` (for --help) and `describe(settings)`, the one sentence the card, the
  report, `inspect` and `export-config` print; `looser`, the option that makes it mask less.

`settings` is always the mask stage's MaskStageSettings (ftprep.stages.mask_settings):
`settings.options` holds this strategy's Options, the rest the settings every strategy shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ftprep.stages.errors import Setting, SettingError

# Trainers the training columns are for: hf (with ftprep.trainer) reads loss_weights and KL
# targets; trl, axolotl and llama-factory take input_ids/attention_mask/labels as they are.
TARGETS = ("hf", "trl", "axolotl", "llama-factory")


@dataclass(frozen=True)
class NoOptions:
    """The options of a strategy that has none."""


@dataclass
class ExtraOutputs:
    """What a strategy adds to a shard's training rows beyond labels and weights."""

    columns: dict[str, pa.Array] = field(default_factory=dict)
    supervised: np.ndarray | None = None  # tokens that carry a loss of its own (they count for --min-kept)
    stats: dict = field(default_factory=dict)


class Strategy:
    name = ""
    summary = ""  # what it does, for --help
    Options: type = NoOptions
    targets = TARGETS
    makes_weights = False
    needs_top_k = False
    needs_against = False
    # (option, "higher" or "lower"): how this strategy masks less, which the shared-token warning
    # suggests; None where no option of its own does.
    looser: tuple[str, str] | None = None

    def masked(self, view, candidates: np.ndarray, settings, context) -> tuple[np.ndarray, np.ndarray | None]:
        """Which tokens lose their label, and each token's weight (None: 1 on every assistant
        token that keeps its label). `context`: what `prepare` computed over the whole dataset."""
        raise NotImplementedError

    def describe(self, settings) -> str:
        raise NotImplementedError

    def prepare(self, settings, candidate_perplexities) -> object:
        """Anything the strategy needs from the whole dataset before the first shard; None by default.
        `candidate_perplexities()` yields (perplexities, global row of each) of each shard's candidates."""
        return None

    def columns(self, settings) -> dict[str, pa.DataType]:
        """The training columns of its own that it writes with these settings (beyond labels and weights)."""
        return {}

    def extra_outputs(self, table: pa.Table, view, masked: np.ndarray, settings) -> ExtraOutputs | None:
        """Its own columns of one shard (`columns`' names), the tokens they supervise and their stats."""
        return None

    def finish_stats(self, stats: dict) -> None:
        """Its figures of the whole run, from the shards' merged stats (in place)."""

    def perplexity_line(self, settings) -> float | None:
        """The perplexity above which it masks, where it has one: the report and the card draw it."""
        return None

    def check(self, settings) -> None:
        """Its rules on which settings go together; the mask settings' own come first."""
        if settings.target not in self.targets:
            raise SettingError("{target} cannot read what {strategy} writes: use {choices}", field="target",
                               target=Setting("target", settings.target), strategy=Setting("strategy", self.name),
                               choices=" or ".join(self.targets))

    def check_export(self, settings, folder: str, target: str) -> None:
        """Whether `target`'s trainer can read what a mask run with these settings wrote in `folder`."""
        from ftprep.stages.mask_settings import writes_weights

        if writes_weights(settings) and target in ("axolotl", "llama-factory"):
            # The rerun named must pass the mask's own check: a target other than hf takes no weights.
            if self.makes_weights:
                rerun = "a hard strategy (e.g. {hard}) and {rerun}"
            else:
                rerun = "{rerun} (without {weights})"
            raise SettingError("{folder} has loss_weights, which {target} cannot read: print the snippet for {hf} (TRL with "
                               "ftprep.trainer), or rerun ftprep mask with " + rerun, field="target", folder=folder,
                               target=target, rerun=Setting("target", target), hf=Setting("target", "hf"),
                               hard=Setting("strategy", "threshold"), weights=Setting("weights"))
