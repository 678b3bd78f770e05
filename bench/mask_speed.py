"""Speed of the mask stage (threshold and soft) on a synthetic scored dataset: no model needed.

Builds shards of scored rows (random token ids, assistant second halves, logprobs drawn from a
mix of confident and uncertain tokens, ranks) totalling --tokens tokens, then times
`MaskStage` over every shard, best of --repeat passes, per strategy. Target: >= 1 M tokens/s.

Run: .venv/bin/python bench/mask_speed.py [--tokens 5000000] [--shard-rows 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ftprep.commands.mask import MaskSettings  # noqa: E402
from ftprep.stages import Rejects  # noqa: E402
from ftprep.stages.mask import MaskStage  # noqa: E402
from ftprep.stages.mask_settings import MaskStageSettings  # noqa: E402

END_OF_TURN = 2


def synthetic_shard(rows: int, mean_length: int, first_index: int, rng: np.random.Generator) -> pa.Table:
    lengths = rng.integers(mean_length // 2, mean_length * 3 // 2, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = int(offsets[-1])
    position = np.arange(tokens) - np.repeat(offsets[:-1], lengths)
    assistant = (position >= np.repeat(lengths // 2, lengths)).astype(np.int8)
    ids = rng.integers(3, 49152, tokens).astype(np.int32)
    ids[offsets[1:] - 1] = END_OF_TURN  # each row ends its assistant turn
    # 70 % confident tokens (perplexity near 1), 30 % spread over the tail.
    logprobs = np.where(rng.random(tokens) < 0.7, -rng.exponential(0.05, tokens), -rng.exponential(2.0, tokens))
    logprobs = np.where(assistant == 1, logprobs, np.nan).astype(np.float32)
    rank = np.where(assistant == 1, 1 + rng.geometric(0.6, tokens) - 1, 0).astype(np.int32)

    def lists(values, kind):
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, kind))

    return pa.table({
        "id": pa.array([f"row-{first_index + i}" for i in range(rows)]),
        "index": pa.array(np.arange(first_index, first_index + rows, dtype=np.int64)),
        "input_ids": lists(ids, pa.int32()),
        "assistant_mask": lists(assistant, pa.int8()),
        "logprobs": lists(logprobs, pa.float32()),
        "entropy": lists(np.abs(logprobs), pa.float32()),
        "rank": lists(rank, pa.int32()),
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=5_000_000)
    parser.add_argument("--shard-rows", type=int, default=1000)
    parser.add_argument("--row-tokens", type=int, default=500, help="mean tokens per row")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    shards, tokens = [], 0
    while tokens < args.tokens:
        shard = synthetic_shard(args.shard_rows, args.row_tokens, len(shards) * args.shard_rows, rng)
        shards.append(shard)
        tokens += len(shard.column("input_ids").combine_chunks().values)
    print(f"synthetic scored dataset: {len(shards)} shards, {sum(s.num_rows for s in shards)} rows, {tokens:,} tokens")
    for strategy in ("threshold", "soft"):
        config = MaskSettings(scored="scored", output="train", strategy=strategy).to_dict()
        stage = MaskStage(MaskStageSettings.from_config(config), [END_OF_TURN])
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            for shard in shards:
                stage(shard, Rejects())
            best = min(best, time.perf_counter() - started)
        rate = tokens / best
        print(f"mask --strategy {strategy:<10} {rate / 1e6:6.2f} M tokens/s  ({best:.2f} s, best of {args.repeat})  "
              f"target >= 1 M/s: {'met' if rate >= 1e6 else 'NOT met'}")


if __name__ == "__main__":
    main()
