"""soft: every assistant token keeps its label, with a loss weight that falls with its perplexity
(exp(-((ppl - 1) / sigma)^2), or p^alpha); trained with ftprep.trainer, which reads the weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.options import positive, setting
from ftprep.stages.strategies.base import Strategy

WEIGHT_FNS = ("gauss", "prob")


@dataclass(frozen=True)
class SoftOptions:
    weight_fn: str = setting("gauss", choices=WEIGHT_FNS, help="soft: exp(-((ppl-1)/sigma)^2) or p^alpha.")
    sigma: float = positive(0.75, help="soft gauss width.")
    alpha: float = positive(1.0, help="soft prob exponent.")
    min_weight: float = setting(0.0, low=0, high=1, help="soft: weights below this are raised to it.")


class Soft(Strategy):
    name = "soft"
    summary = "keep every label and write loss_weights from the perplexity (--weight-fn)"
    Options = SoftOptions
    targets = ("hf",)
    makes_weights = True
    looser = ("min_weight", "higher")  # no weight reaches 0 above it

    def masked(self, view, candidates, settings, context):
        return np.zeros(len(view.input_ids), dtype=bool), soft_weights(view, candidates, settings.options)

    def describe(self, settings):
        options = settings.options
        if options.weight_fn == "gauss":
            text = f"soft: every assistant token keeps its label, with loss_weights exp(-((ppl-1)/{options.sigma:g})^2)"
        else:
            text = f"soft: every assistant token keeps its label, with loss_weights p^{options.alpha:g}"
        if options.min_weight:
            text += f", at least {options.min_weight:g}"
        return text


def soft_weights(view, candidates: np.ndarray, options: SoftOptions) -> np.ndarray:
    """Weight of every token: f(ppl) on candidates, 1 on kept end-of-turn tokens, 0 elsewhere."""
    if options.weight_fn == "gauss":
        curve = np.exp(-(((view.perplexity - 1.0) / options.sigma) ** 2))
    elif options.weight_fn == "prob":
        curve = np.exp(options.alpha * view.logprobs.astype(np.float64))
    else:
        raise SettingError("unknown {weight_fn} {value!r}: use one of {choices}", field="weight_fn",
                           weight_fn=Setting("weight_fn"), value=options.weight_fn, choices=", ".join(WEIGHT_FNS))
    curve = np.where(np.isnan(curve), 1.0, np.maximum(curve, options.min_weight))
    weights = np.where(candidates, curve, 0.0)
    weights[view.assistant & ~candidates] = 1.0
    return weights.astype(np.float32)
