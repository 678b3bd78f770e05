"""`ftprep stats`: a run's stats.json as a table, histograms drawn as bars."""

from __future__ import annotations


def format_stats(stats: dict) -> str:
    lines = []
    for key, value in stats.items():
        if isinstance(value, dict):
            continue
        lines.append(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    for key, value in stats.items():
        if key == "perplexity_histogram":
            total = max(sum(value.values()), 1)
            lines.append("perplexity of assistant tokens:")
            for label, count in value.items():
                lines.append(f"{label:>12} {count:>8} {'#' * round(40 * count / total)}")
        elif isinstance(value, dict) and value:
            lines.append(f"{key}:")
            lines.extend(f"{name:>40}: {count}" for name, count in value.items())
    return "\n".join(lines)
