"""CPU benchmark of `ftprep score` against the naive reference and the fp32 matmul ceiling.

On the same tokenized rows it measures:
  1. the `ftprep score` path (HFScorer on cpu), tokens/s over all tokens of the rows, in
     float32 (the default on CPU) and in bfloat16 (`--dtype bfloat16`);
  2. the naive reference as the STM paper's code does it: the model loaded in bfloat16, one
     row at a time, a full forward to `.logits`, log-softmax over the whole vocabulary in
     bfloat16, gather the targets; and the same with float32 weights (on a prefix of the rows
     when the whole set would take more than ~120 s);
  3. the fp32 matmul ceiling: best GFLOP/s of a large matmul, divided by 2 x parameters
     FLOPs per token (and the bf16 matmul peak, for context);
and the peak RSS of each, each run in its own fresh subprocess (`--only NAME`).
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
    parser.add_argument("--batch-tokens", type=int, help="default: ftprep's default for the CPU")
    parser.add_argument("--repeat-data", type=int, default=3, help="repeat the rows N times")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--only", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        work = Path(args.workdir)
        result = MEASURES[args.only](args, work)
        # KiB on Linux; vLLM runs its engine in a child process, so count the largest child too.
        result["peak_rss_mib"] = sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
        (work / f"{args.only}.json").write_text(json.dumps(result))
        return
    started, cpu_before = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        work = Path(tmp)
        table = load_table(args)
        with pa.OSFile(str(work / "rows.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        runs = ["matmul", "hf", "hf-bf16"] + ([] if args.skip_naive else ["naive", "naive-fp32"])
        results = {name: run_child(args, work, name) for name in runs}
        diff = {name: logprob_diff(table, work, name, results[name]["rows"]) for name in runs if name.startswith(("naive", "hf-"))}
    report(args, table, results, diff)
    wall = time.perf_counter() - started
    machine, mine = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    others = max(0.0, machine - mine) / (wall * os.cpu_count())
    print(f"total wall time {wall:.0f} s; other processes used {100 * others:.0f} % of the CPUs meanwhile"
          + ("  (WARNING: the figures above are skewed by that load)" if others > 0.05 else ""))


# -- parent ----------------------------------------------------------------------------------


def load_table(args) -> pa.Table:
    """Rows of --input, normalized and tokenized by the project's own code, repeated N times."""
    from ftprep.models import load_tokenizer, resolve_model
    from ftprep.readers import input_format, open_source, source_table
    from ftprep.stages import Rejects
    from ftprep.stages.normalize import NormalizeStage
    from ftprep.stages.tokenization import ChatTokenizer, TokenizeStage

    path = Path(args.input)
    source = open_source(str(path if path.is_absolute() else ROOT / path))
    rows = source_table(list(source.rows()))
    rejects = Rejects()
    normalized, _ = NormalizeStage(input_format(source, None))(rows, rejects)
    table, _ = TokenizeStage(ChatTokenizer(load_tokenizer(resolve_model(args.model))))(normalized, rejects)
    table = table.drop_columns(["index"])
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
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--workdir", str(work), "--model", args.model]
    if args.batch_tokens:
        command += ["--batch-tokens", str(args.batch_tokens)]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    subprocess.run(command, check=True)
    return json.loads((work / f"{name}.json").read_text())


def logprob_diff(table: pa.Table, work: Path, name: str, rows: int) -> float:
    """Mean |ftprep fp32 - other| over the assistant tokens (never a row's first) of the rows both scored."""
    offsets = table.column("input_ids").combine_chunks().offsets.to_numpy()[: rows + 1]
    mask = table.column("assistant_mask").combine_chunks().values.to_numpy(zero_copy_only=False).astype(bool)
    not_first = np.ones(offsets[-1], dtype=bool)
    not_first[offsets[:-1]] = False
    hf = np.load(work / "hf_logprobs.npy")[: offsets[-1]][not_first]
    other = np.load(work / f"{name}_logprobs.npy")
    if not name.startswith("naive"):  # scorer outputs hold every position of every row
        other = other[: offsets[-1]][not_first]
    # naive files hold each row's positions 1.., rows concatenated
    keep = mask[: offsets[-1]][not_first]
    return float(np.abs(hf[keep] - other[keep]).mean())


def report(args, table: pa.Table, results: dict, diff: dict) -> None:
    hf, matmul = results["hf"], results["matmul"]
    tokens = len(table.column("input_ids").combine_chunks().values)
    assistant = int(table.column("assistant_mask").combine_chunks().values.to_numpy(zero_copy_only=False).sum())
    flops_per_token = 2 * hf["params"]
    ceiling = matmul["gflops"] * 1e9 / flops_per_token
    print()
    print(f"rows {table.num_rows}, tokens {tokens} (assistant {assistant}), model {args.model}, "
          f"{hf['params'] / 1e6:.1f}M params, {flops_per_token / 1e6:.0f} MFLOP/token, "
          f"batch_tokens {hf['batch_tokens']}, torch threads {matmul['threads']}")
    print(f"fp32 matmul peak            {matmul['gflops']:6.1f} GFLOP/s  (n={matmul['n']})  -> ceiling {ceiling:.0f} tok/s")
    print(f"bf16 matmul peak            {matmul['bf16_gflops']:6.1f} GFLOP/s  (for context: the ceiling above is fp32)")

    def line(label, result):
        rate = result["tokens"] / result["seconds"]
        print(f"{label:<28}{rate:6.0f} tok/s   peak RSS {result['peak_rss_mib']:5.0f} MiB "
              f"(model loaded {result['loaded_rss_mib']:4.0f})   {100 * rate / ceiling:4.0f} % of ceiling")
        return rate

    hf_rate = line("ftprep score (hf, fp32)", hf)
    bf16_rate = line("ftprep score (hf, bf16)", results["hf-bf16"])
    labels = {"naive": "naive reference (bf16)", "naive-fp32": "naive, fp32 weights"}
    naive_rates = {}
    for name, label in labels.items():
        if name in results:
            naive = results[name]
            naive_rates[name] = line(label, naive)
            if naive["rows"] < table.num_rows:
                print(f"  ({name}: first {naive['rows']} of {table.num_rows} rows, {naive['tokens']} tokens, "
                      f"stopped at the {NAIVE_BUDGET_S:.0f} s budget)")
    if "naive" in naive_rates:
        print(f"ratio ftprep fp32 / naive (bf16, the paper's)   {hf_rate / naive_rates['naive']:5.2f}  (target >= 2)")
        print(f"ratio ftprep bf16 / naive (bf16, the paper's)   {bf16_rate / naive_rates['naive']:5.2f}")
        print(f"ratio ftprep fp32 / naive with fp32 weights     {hf_rate / naive_rates['naive-fp32']:5.2f}")
    print(f"ratio ftprep fp32 / fp32 ceiling                {hf_rate / ceiling:5.2f}  (target >= 0.80)")
    for name, value in diff.items():
        print(f"mean |logprob diff| ftprep fp32 vs {name}: {value:.4f} nats")


# -- children --------------------------------------------------------------------------------


def read_rows(work: Path) -> pa.Table:
    with pa.memory_map(str(work / "rows.arrow")) as source:
        return pa.ipc.open_file(source).read_all()


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure_hf(args, work: Path, dtype: str = "float32", name: str = "hf", backend: str = "hf") -> dict:
    from ftprep.runtime import make_scorer, resolve_runtime

    table = read_rows(work)
    started = time.perf_counter()
    runtime = resolve_runtime(args.model, "cpu", dtype, backend)
    scorer = make_scorer(runtime, top_k=0, score_prompt=False, batch_tokens=args.batch_tokens)
    scorer(table.slice(0, WARMUP_ROWS))
    startup = time.perf_counter() - started
    loaded = current_rss_mib()
    started = time.perf_counter()
    scored = scorer(table)
    seconds = time.perf_counter() - started
    np.save(work / f"{name}_logprobs.npy", scored.column("logprobs").combine_chunks().values.to_numpy(zero_copy_only=False))
    return {"seconds": seconds, "tokens": len(scored.column("input_ids").combine_chunks().values),
            "rows": table.num_rows, "startup_seconds": startup, "loaded_rss_mib": loaded,
            "params": sum(p.numel() for p in scorer.model.parameters()) if backend == "hf" else None,
            "batch_tokens": getattr(scorer, "batch_tokens", None)}


def measure_naive(args, work: Path, weights: str = "bfloat16", name: str = "naive") -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ftprep.models import resolve_model

    rows = read_rows(work).column("input_ids").to_pylist()
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=getattr(torch, weights)).eval()

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
    np.save(work / f"{name}_logprobs.npy", np.concatenate(parts))
    return {"seconds": seconds, "tokens": tokens, "rows": len(parts), "loaded_rss_mib": loaded}


def measure_matmul(args, work: Path) -> dict:
    import torch

    def peak(dtype):
        best = (0.0, 0)
        for n, repeats in ((2048, 10), (3072, 6), (4096, 4)):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            a @ b  # warm-up
            for _ in range(2):  # best of two timings: the figure is a ceiling
                started = time.perf_counter()
                for _ in range(repeats):
                    a @ b
                best = max(best, (2 * n**3 * repeats / (time.perf_counter() - started) / 1e9, n))
        return best

    (gflops, n), (bf16_gflops, _) = peak(torch.float32), peak(torch.bfloat16)
    return {"gflops": gflops, "n": n, "bf16_gflops": bf16_gflops, "threads": torch.get_num_threads(),
            "loaded_rss_mib": current_rss_mib()}


MEASURES = {
    "matmul": measure_matmul,
    "hf": measure_hf,
    "hf-bf16": lambda args, work: measure_hf(args, work, "bfloat16", "hf-bf16"),
    "vllm": lambda args, work: measure_hf(args, work, "float32", "vllm", backend="vllm"),
    "naive": measure_naive,
    "naive-fp32": lambda args, work: measure_naive(args, work, "float32", "naive-fp32"),
}


if __name__ == "__main__":
    main()
