"""Mask strategies: how scores become labels or weights, one class each (see base.py for what a
class declares), registered here by name.

Adding one is a new module with its class, `register(MyStrategy())`, and its tests: its options
then appear in `ftprep mask --help`, `ftprep.mask(...)` and the manifest's config.

Registered: threshold, quantile, soft, delta, anchor, none (in that order).
"""

from __future__ import annotations

import dataclasses

from ftprep.stages.errors import FtprepError
from ftprep.stages.strategies.anchor import Anchor
from ftprep.stages.strategies.base import TARGETS, ExtraOutputs, NoOptions, Strategy
from ftprep.stages.strategies.delta import AGAINST_LOGPROBS, Delta
from ftprep.stages.strategies.plain import Plain
from ftprep.stages.strategies.quantile import Quantile
from ftprep.stages.strategies.soft import WEIGHT_FNS, Soft
from ftprep.stages.strategies.threshold import STM_THRESHOLD, Threshold

__all__ = ["AGAINST_LOGPROBS", "REGISTRY", "STM_THRESHOLD", "TARGETS", "WEIGHT_FNS", "ExtraOutputs", "NoOptions", "Strategy",
           "option_names", "register", "registered", "strategy_named", "unregister"]

REGISTRY: dict[str, Strategy] = {}
# Settings of the mask stage itself, which no strategy's option may take the name of.
RESERVED = ("scored", "output", "strategy", "options", "keep_eos", "min_kept", "weights", "target", "keep_shared")


def option_names(strategy: Strategy) -> tuple[str, ...]:
    return tuple(item.name for item in dataclasses.fields(strategy.Options))


def register(strategy: Strategy) -> Strategy:
    """Add a strategy under its name; its option names must be new."""
    if not strategy.name or strategy.name in REGISTRY:
        raise ValueError(f"a strategy needs a name of its own: {strategy.name!r} is {'taken' if strategy.name else 'empty'}")
    taken = {name for other in REGISTRY.values() for name in option_names(other)} | set(RESERVED)
    clash = sorted(taken & set(option_names(strategy)))
    if clash:
        raise ValueError(f"strategy {strategy.name}: option {', '.join(clash)} is another's")
    REGISTRY[strategy.name] = strategy
    return strategy


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def registered() -> tuple[str, ...]:
    return tuple(REGISTRY)


def strategy_named(name: str) -> Strategy:
    if name not in REGISTRY:
        raise FtprepError(f"unknown strategy {name!r}: use one of {', '.join(REGISTRY)}", field="strategy")
    return REGISTRY[name]


for _builtin in (Threshold(), Quantile(), Soft(), Delta(), Anchor(), Plain()):
    register(_builtin)
