"""none: every assistant token keeps its label, the plain SFT baseline."""

from __future__ import annotations

import numpy as np

from ftprep.stages.strategies.base import Strategy


class Plain(Strategy):
    name = "none"
    summary = "loss on assistant tokens only, the plain SFT baseline"

    def masked(self, view, candidates, settings, context):
        return np.zeros(len(view.input_ids), dtype=bool), None

    def describe(self, settings):
        return "none: loss on assistant tokens only (plain SFT)"
