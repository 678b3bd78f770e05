"""Reading ahead in the local engine: wall time with the next shard read while the model works,
against one shard after the other (READ_AHEAD_SHARDS = 0), and whether the output is the same.

1. A reader and a model that each wait a fixed time per shard (what a remote dataset and a GPU
   look like to the CPU: the process waits, the GIL is free): the overlap the engine can give.
2. `ftprep score` on the rows of data/ on this CPU, with the embedded model, read ahead or not:
   here reading and tokenizing compete with torch for the same cores, so expect little.

Run: .venv/bin/python bench/read_ahead.py [--shards 8] [--seconds 0.5] [--rows 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa

import ftprep
import ftprep.engines as engines
from ftprep.progress import Progress

REPO = Path(__file__).resolve().parent.parent


class _Output:
    def has_shard(self, shard):
        return False

    def write_shard(self, shard, table, rejects, stats):
        pass


class _WaitingModel:
    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, table, rejects):
        time.sleep(self.seconds)
        return table, {}

    def close(self):
        pass


def waiting_run(shards: int, seconds: float) -> float:
    def read(where):
        time.sleep(seconds)
        return pa.table({"index": [where.shard]})

    work = engines.ShardWork(read=read, build_model_stage=lambda: _WaitingModel(seconds))
    wheres = [SimpleNamespace(shard=shard, count=1) for shard in range(shards)]
    started = time.perf_counter()
    engines.LocalEngine().run(_Output(), wheres, work, Progress("bench", shards, interval=3600))
    return time.perf_counter() - started


def score_run(rows: int, output: Path) -> float:
    started = time.perf_counter()
    ftprep.score(str(REPO / "data" / "sample.jsonl"), output=str(output), limit=rows, shard_rows=max(1, rows // 8),
                 dtype="float32")
    return time.perf_counter() - started


def arrow_bytes(folder: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted(folder.glob("*.arrow"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=0.5, help="read and model time per shard in part 1")
    parser.add_argument("--rows", type=int, default=64, help="rows of data/sample.jsonl in part 2 (8 shards)")
    args = parser.parse_args()

    waits = {}
    for depth in (0, 1):
        engines.READ_AHEAD_SHARDS = depth
        waits[depth] = waiting_run(args.shards, args.seconds)
    ideal = (args.shards + 1) * args.seconds
    print(f"1. {args.shards} shards, read {args.seconds} s + model {args.seconds} s each: one after the other "
          f"{waits[0]:.2f} s, read ahead {waits[1]:.2f} s ({waits[0] / waits[1]:.2f}x; the overlap's bound is "
          f"{ideal:.2f} s, {waits[0] / ideal:.2f}x)")

    with tempfile.TemporaryDirectory(prefix="read-ahead-bench-") as tmp:
        score_run(min(args.rows, 8), Path(tmp) / "warm")  # model conversion, imports and caches out of the timing
        times, outputs = {0: [], 1: []}, {}
        for attempt in range(2):  # alternated: the machine's load drifts
            for depth in (0, 1):
                engines.READ_AHEAD_SHARDS = depth
                folder = Path(tmp) / f"score-{depth}-{attempt}"
                times[depth].append(score_run(args.rows, folder))
                outputs[depth] = arrow_bytes(folder)
    best = {depth: min(values) for depth, values in times.items()}
    every = "; ".join(f"{'read ahead' if depth else 'serial'} {', '.join(f'{value:.1f}' for value in values)} s"
                      for depth, values in times.items())
    print(f"2. ftprep score, {args.rows} rows in 8 shards, this CPU: one after the other {best[0]:.2f} s, read ahead "
          f"{best[1]:.2f} s ({best[0] / best[1]:.2f}x, best of 2: {every}); the same Arrow files: {outputs[0] == outputs[1]}")


if __name__ == "__main__":
    main()
