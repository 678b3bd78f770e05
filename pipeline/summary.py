"""What a run of score, regen or mask reports in one object: `--json` prints it, the Python
API's result carries it, and a call that rejected rows warns with its top reasons."""

from __future__ import annotations

import json
from pathlib import Path

TOP_REASONS = 3
COUNTS = ("rows_in", "rows_out", "rows_rejected")


def run_summary(output, stats: dict) -> dict:
    """The run's output, counts, rejects by reason and every figure of stats.json that is a
    number (histograms and quantiles stay in stats.json)."""
    figures = {key: value for key, value in stats.items()
               if key not in COUNTS and isinstance(value, (int, float)) and not isinstance(value, bool)}
    return {"output": str(output), **{key: stats.get(key, 0) for key in COUNTS},
            "reject_reasons": dict(stats.get("reject_reasons", {})), "stats": figures}


def read_stats(folder: Path) -> dict:
    path = Path(folder) / "stats.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_rejects(folder: Path) -> list[dict]:
    path = Path(folder) / "rejects.jsonl"
    if not path.is_file():
        return []
    # JSON Lines ends a record at "\n" only (a reason may hold U+2028, which splitlines() cuts at).
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def top_reasons_text(reasons: dict[str, int], top: int = TOP_REASONS) -> str:
    """"2 missing field 'messages'; 1 no assistant turn": the most frequent reasons first."""
    ranked = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    text = "; ".join(f"{count} {reason}" for reason, count in ranked[:top])
    more = len(ranked) - top
    return text + (f"; {more} other reason{'s' if more > 1 else ''}" if more > 0 else "")


def rejected_line(command: str, output, stats: dict) -> str | None:
    """The line a Python call warns with when rows were rejected; None when none were."""
    rejected = stats.get("rows_rejected", 0)
    if not rejected:
        return None
    return (f"ftprep.{command}: {rejected} of {stats.get('rows_in', rejected)} rows rejected "
            f"({top_reasons_text(stats.get('reject_reasons', {}))}); see the result's .rejects or {Path(output) / 'rejects.jsonl'}")
