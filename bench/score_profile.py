"""Where the CPU scoring time goes: torch.profiler over the hf scorer, as `ftprep score` runs it
(its model loading, its --dtype auto, its default batches), as shares of CPU time per op.

The rows of data/sample.jsonl and data/arithmetic.jsonl are scored once through ftprep (which
tokenizes them and warms the model up); the profile then covers a second pass of the scorer
over the same token rows. Op shares are steadier than wall times on a shared machine, but take
them from a quiet one.

Run: .venv/bin/python bench/score_profile.py [--model smollm2-135m] [--dtype auto] [--top 14]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCES = ("data/sample.jsonl", "data/arithmetic.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--top", type=int, default=14, help="ops to list")
    args = parser.parse_args()

    from torch.profiler import ProfilerActivity, profile

    import ftprep
    from ftprep.models import load_model, resolve_model
    from ftprep.runtime import resolve_dtype
    from ftprep.stages.score.hf import HFScorer

    rows = [line for source in SOURCES for line in (ROOT / source).read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as work:
        inputs = Path(work) / "rows.jsonl"
        inputs.write_text("\n".join(rows) + "\n")
        scored = ftprep.score(str(inputs), output=str(Path(work) / "scored"), model=args.model, dtype=args.dtype)
        tokens = scored.data.table.select(["input_ids", "assistant_mask"])

    dtype = resolve_dtype(args.dtype, "cpu", cpu_bf16=None)
    scorer = HFScorer(load_model(resolve_model(args.model), dtype, "cpu"))
    scorer(tokens.slice(0, 4))
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        scorer(tokens)
    events = profiler.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    count = sum(len(ids) for ids in tokens.column("input_ids").to_pylist())
    print(f"{args.model}, {dtype}, {tokens.num_rows} rows, {count:,} tokens, batches of {scorer.batch_tokens} tokens")
    print(f"{'op':48s} {'share of CPU time':>18s} {'calls':>8s}")
    for event in sorted(events, key=lambda event: -event.self_cpu_time_total)[: args.top]:
        print(f"{event.key[:48]:48s} {100 * event.self_cpu_time_total / total:17.1f} % {event.count:8d}")


if __name__ == "__main__":
    main()
