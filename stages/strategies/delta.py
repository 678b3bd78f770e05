"""delta: no loss where a second model (the same input scored under it, `--against`) finds the
token much less likely than the target model does: what is new to one model but not the other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftprep.stages import perplexity
from ftprep.stages.options import setting
from ftprep.stages.strategies.base import Strategy

# The --against model's logprobs, aligned token for token with `logprobs`: the column the mask
# command adds to each scored shard for a strategy that needs_against.
AGAINST_LOGPROBS = "against_logprobs"


@dataclass(frozen=True)
class DeltaOptions:
    against: str | None = setting(None, path=True, dataset=True, help="delta: the same input scored with a second model (ftprep score --model B).")
    delta: float = setting(2.5, help="delta: mask assistant tokens whose perplexity under the --against model exceeds "
                                     "the one in SCORED by more than this.")


class Delta(Strategy):
    name = "delta"
    summary = "label -100 where perplexity under the --against model exceeds this one's by more than --delta"
    Options = DeltaOptions
    needs_against = True
    looser = ("delta", "higher")

    def masked(self, view, candidates, settings, context):
        if view.against_logprobs is None:
            raise ValueError(f"the delta strategy needs the {AGAINST_LOGPROBS} column (the mask command adds it from --against)")
        with np.errstate(invalid="ignore"):  # inf - inf is NaN: both models find the token impossible, no rise
            rise = perplexity(view.against_logprobs) - view.perplexity
        return candidates & (rise > settings.options.delta), None

    def describe(self, settings):
        return (f"delta: label -100 on assistant tokens whose perplexity under a second model is higher by more than "
                f"{settings.options.delta:g}")
