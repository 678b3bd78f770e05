"""CPU benchmark of `ftprep score` against the naive reference and the fp32 matmul ceiling.

On the same tokenized rows it measures:
  1. the `ftprep score` path (HFScorer, float32, cpu), tokens/s over all tokens of the rows;
  2. the naive reference as the STM paper's code does it: one row at a time, a full forward
     to `.logits`, log_softmax over the whole vocabulary in bfloat16, gather the targets
     (on a prefix of the rows when the whole set would take more than ~120 s);
  3. the fp32 matmul ceiling: best GFLOP/s of a large matmul, divided by 2 x parameters
     FLOPs per token;
and the peak RSS of 1 and 2, each run in its own fresh subprocess (`--only hf|naive|matmul`).
It also prints the mean |logprob difference| of the two paths on assistant tokens.

Run: .venv/bin/python bench/score_cpu.py [--input data/sample.jsonl] [--repeat-data 3] [--skip-naive]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

NAIVE_BUDGET_S = 120.0
WARMUP_ROWS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="data/sample.jsonl", help="relative paths are from the repo root")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-tokens", type=int, default=8192)
    parser.add_argument("--repeat-data", type=int, default=3, help="repeat the rows N times")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--only", choices=("hf", "naive", "matmul"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        work = Path(args.workdir)
        result = {"hf": measure_hf, "naive": measure_naive, "matmul": measure_matmul}[args.only](args, work)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        (work / f"{args.only}.json").write_text(json.dumps(result))
        return
    started, cpu_before = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        work = Path(tmp)
        table = load_table(args)
        with pa.OSFile(str(work / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        runs = ["matmul", "hf"] + ([] if args.skip_naive else ["naive"])
        results = {name: run_child(args, work, name) for name in runs}
        diff = logprob_diff(table, work, results["naive"]["rows"]) if "naive" in results else None
    report(args, table, results, diff)
    wall = time.perf_counter() - started
    machine, mine = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    others = max(0.0, machine - mine) / (wall * os.cpu_count())
    print(f"total wall time {wall:.0f} s; other processes used {100 * others:.0f} % of the CPUs meanwhile"
          + ("  (WARNING: the figures above are skewed by that load)" if others > 0.05 else ""))


# -- parent ----------------------------------------------------------------------------------


def load_table(args) -> pa.Table:
    """Rows of --input, normalized and tokenized by the project's own code, repeated N times."""
    from pipeline.models import load_tokenizer, resolve_model
    from pipeline.readers import open_source
    from pipeline.runner import FORMAT_SAMPLE_ROWS, prepare_shard
    from stages.normalize import detect_format
    from stages.tokenize import ChatTokenizer

    path = Path(args.input)
    rows = list(open_source(str(path if path.is_absolute() else ROOT / path)).rows())
    fmt = detect_format(row for _, row in rows[:FORMAT_SAMPLE_ROWS] if isinstance(row, dict))
    chat = ChatTokenizer(load_tokenizer(resolve_model(args.model)))
    table, rejects, _ = prepare_shard(rows, fmt, chat)  # normalize_row + ChatTokenizer + tokenized_table
    if rejects:
        print(f"{len(rejects)} rows rejected by normalize/tokenize, left out", file=sys.stderr)
    return pa.concat_tables([table] * args.repeat_data)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine (/proc/stat) and by this process and its children."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    mine = sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    return machine, mine


def run_child(args, work: Path, name: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--workdir", str(work),
               "--model", args.model, "--batch-tokens", str(args.batch_tokens)]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    return json.loads((work / f"{name}.json").read_text())


def logprob_diff(table: pa.Table, work: Path, naive_rows: int) -> float:
    """Mean |ftprep - naive| over the assistant tokens (never a row's first) of the rows naive scored."""
    offsets = table.column("input_ids").combine_chunks().offsets.to_numpy()[: naive_rows + 1]
    mask = table.column("assistant_mask").combine_chunks().values.to_numpy(zero_copy_only=False).astype(bool)
    not_first = np.ones(offsets[-1], dtype=bool)
    not_first[offsets[:-1]] = False
    hf = np.load(work / "hf_logprobs.npy")[: offsets[-1]][not_first]
    naive = np.load(work / "naive_logprobs.npy")  # each row's positions 1.., rows concatenated
    keep = mask[: offsets[-1]][not_first]
    return float(np.abs(hf[keep] - naive[keep]).mean())


def report(args, table: pa.Table, results: dict, diff: float | None) -> None:
    hf, matmul = results["hf"], results["matmul"]
    tokens = len(table.column("input_ids").combine_chunks().values)
    assistant = int(table.column("assistant_mask").combine_chunks().values.to_numpy(zero_copy_only=False).sum())
    flops_per_token = 2 * hf["params"]
    ceiling = matmul["gflops"] * 1e9 / flops_per_token
    print()
    print(f"rows {table.num_rows}, tokens {tokens} (assistant {assistant}), model {args.model}, "
          f"{hf['params'] / 1e6:.1f}M params, {flops_per_token / 1e6:.0f} MFLOP/token, "
          f"batch_tokens {args.batch_tokens}, torch threads {matmul['threads']}")
    print(f"fp32 matmul peak            {matmul['gflops']:6.1f} GFLOP/s  (n={matmul['n']})  -> ceiling {ceiling:.0f} tok/s")

    def line(label, result):
        rate = result["tokens"] / result["seconds"]
        print(f"{label:<28}{rate:6.0f} tok/s   peak RSS {result['peak_rss_mib']:5.0f} MiB "
              f"(model loaded {result['loaded_rss_mib']:4.0f})   {100 * rate / ceiling:4.0f} % of ceiling")
        return rate

    hf_rate = line("ftprep score (hf, fp32)", hf)
    if "naive" in results:
        naive = results["naive"]
        naive_rate = line("naive reference (bf16 lsm)", naive)
        if naive["rows"] < table.num_rows:
            print(f"  (naive: first {naive['rows']} of {table.num_rows} rows, {naive['tokens']} tokens, "
                  f"stopped at the {NAIVE_BUDGET_S:.0f} s budget)")
        print(f"ratio ftprep / naive        {hf_rate / naive_rate:5.2f}  (target >= 2)")
    print(f"ratio ftprep / ceiling      {hf_rate / ceiling:5.2f}  (target >= 0.80)")
    if diff is not None:
        print(f"mean |logprob diff| ftprep vs naive: {diff:.4f} nats")


# -- children --------------------------------------------------------------------------------


def read_rows(work: Path) -> pa.Table:
    with pa.memory_map(str(work / "rows.arrow")) as source:
        return pa.ipc.open_file(source).read_all()


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure_hf(args, work: Path) -> dict:
    from pipeline.models import resolve_model
    from stages.score.hf import HFScorer

    table = read_rows(work)
    scorer = HFScorer(resolve_model(args.model), dtype="float32", device="cpu", batch_tokens=args.batch_tokens)
    scorer(table.slice(0, WARMUP_ROWS))
    loaded = current_rss_mib()
    started = time.perf_counter()
    scored = scorer(table)
    seconds = time.perf_counter() - started
    np.save(work / "hf_logprobs.npy", scored.column("logprobs").combine_chunks().values.to_numpy(zero_copy_only=False))
    return {"seconds": seconds, "tokens": len(scored.column("input_ids").combine_chunks().values),
            "rows": table.num_rows, "params": sum(p.numel() for p in scorer.model.parameters()),
            "loaded_rss_mib": loaded}


def measure_naive(args, work: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.models import resolve_model

    rows = read_rows(work).column("input_ids").to_pylist()
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32).eval()

    @torch.no_grad()
    def score(ids: list[int]) -> np.ndarray:
        input_ids = torch.tensor([ids])
        logits = model(input_ids).logits
        logprobs = torch.log_softmax(logits.to(torch.bfloat16), -1)
        return logprobs[0, :-1].gather(-1, input_ids[0, 1:, None]).squeeze(-1).float().numpy()

    for ids in rows[:WARMUP_ROWS]:
        score(ids)
    loaded = current_rss_mib()
    parts, tokens = [], 0
    started = time.perf_counter()
    for ids in rows:
        parts.append(score(ids))
        tokens += len(ids)
        if time.perf_counter() - started > NAIVE_BUDGET_S:
            break
    seconds = time.perf_counter() - started
    np.save(work / "naive_logprobs.npy", np.concatenate(parts))
    return {"seconds": seconds, "tokens": tokens, "rows": len(parts), "loaded_rss_mib": loaded}


def measure_matmul(args, work: Path) -> dict:
    import torch

    best = (0.0, 0)
    for n, repeats in ((2048, 10), (4096, 4)):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        gflops = 2 * n**3 * repeats / (time.perf_counter() - started) / 1e9
        best = max(best, (gflops, n))
    return {"gflops": best[0], "n": best[1], "threads": torch.get_num_threads(), "loaded_rss_mib": current_rss_mib()}


if __name__ == "__main__":
    main()
