"""The forgetting bench's statistics: mean and spread over seeds, each condition against sft paired by
seed, 95 % bootstrap intervals over the test and retention items, and the verdict those intervals give.

A difference is a condition's per-item result minus sft's on the same item and seed (1 - 0, 0 - 1 or
0), averaged over the seeds: one number per item. Resampling the items (not the seeds: with 3 seeds
there is nothing to resample) gives the interval; a difference whose interval holds 0 is noise.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_SAMPLES = 4000
CONFIDENCE = 0.95
VERDICTS = ("keeps more than sft at no loss of target", "learns more than sft at no loss of retention",
            "trades target for retention", "no better than sft")


def summarize(values: list[float]) -> dict:
    """Mean and spread over seeds: the sample standard deviation (0 with one seed)."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if array.size > 1 else 0.0,
            "values": [float(v) for v in array]}


def paired_difference(condition: list[list[int]], baseline: list[list[int]], seed: int = 0) -> dict:
    """`condition` and `baseline`: per seed, per item results (0/1), the same items and seeds in the
    same order. The mean difference and its 95 % bootstrap interval over items."""
    per_item = (np.asarray(condition, dtype=float) - np.asarray(baseline, dtype=float)).mean(axis=0)
    rng = np.random.default_rng(seed)
    resampled = per_item[rng.integers(0, len(per_item), size=(BOOTSTRAP_SAMPLES, len(per_item)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return {"mean": float(per_item.mean()), "low": float(low), "high": float(high), "items": len(per_item)}


def direction(difference: dict) -> str:
    """"more" or "less" when the interval excludes 0, else "noise"."""
    if difference["low"] > 0:
        return "more"
    if difference["high"] < 0:
        return "less"
    return "noise"


def verdict(target: dict, retention: dict) -> str:
    """What a condition does against sft, from the intervals of its target and retention differences.
    The issue's three verdicts, and a fourth for a target gain at equal retention (the STM paper's
    MBPP result is of that kind), which "no better than sft" would misname."""
    target_way, retention_way = direction(target), direction(retention)
    if retention_way == "more":
        return VERDICTS[2] if target_way == "less" else VERDICTS[0]
    if target_way == "more" and retention_way == "noise":
        return VERDICTS[1]
    return VERDICTS[3]


def interval_text(difference: dict, scale: float = 100.0) -> str:
    """"+4.2 [-1.7, +10.0]" (points), and "(noise)" where the interval holds 0."""
    text = (f"{difference['mean'] * scale:+.1f} [{difference['low'] * scale:+.1f}, "
            f"{difference['high'] * scale:+.1f}]")
    return text + (" (noise)" if direction(difference) == "noise" else "")
