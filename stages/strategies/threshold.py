"""threshold (STM, Wu et al. 2025): no loss on assistant tokens whose perplexity under the target
model is above tau; the paper's tau = 2.5 masks about a fifth of the response tokens."""

from __future__ import annotations

from dataclasses import dataclass

from ftprep.stages.options import setting
from ftprep.stages.strategies.base import Strategy

# The paper's tau: also what `inspect`, `report` and the card of a scored dataset preview.
STM_THRESHOLD = 2.5
# The share of response tokens the paper's tau masks on its data (MBPP 20.8 %, MATH 23.8 %): the
# band the report of a scored dataset draws beside its own curve.
STM_MASKED_SHARE = (0.21, 0.24)


@dataclass(frozen=True)
class ThresholdOptions:
    threshold: float = setting(STM_THRESHOLD, low=1, low_open=True, help="threshold: mask assistant tokens with perplexity above this.")


class Threshold(Strategy):
    name = "threshold"
    summary = "label -100 on assistant tokens with perplexity above --threshold (STM)"
    Options = ThresholdOptions
    looser = ("threshold", "higher")

    def masked(self, view, candidates, settings, context):
        return candidates & (view.perplexity > settings.options.threshold), None

    def describe(self, settings):
        return f"threshold (STM): label -100 on assistant tokens with perplexity above {settings.options.threshold:g}"

    def perplexity_line(self, settings):
        return settings.options.threshold
