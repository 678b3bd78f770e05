"""CPU benchmark of `ftprep score` (its default, whole process) against the STM paper's naive
loop and against the machine's matmul ceilings, all measured in one run.

  1. input: the rows of data/sample.jsonl and data/arithmetic.jsonl, repeated under new ids
     until they hold >= --min-tokens tokens (so that start-up is not the figure);
  2. `ftprep score` as a user runs it (a subprocess, default settings: --dtype auto), wall
     time of the whole process; its steady rate is stats.json's tokens_per_second;
  3. start-up: `ftprep score` on 2 rows, whole process (import, model load, first batch);
  4. the naive loop (the paper's code): bf16 model, one row at a time, full forward to
     .logits, bf16 log-softmax over the vocabulary, gather; whole process and steady;
  5. fp32 and bf16 matmul peaks measured now: square (2048-4096) and at the model's own shapes
     (batch_tokens x hidden x intermediate and back, and the LM head), and the ceilings in
     tok/s they give (2 x weights of the linear layers FLOPs per token; attention ignored);
  6. accuracy of the default against `ftprep score --dtype float32` on the unique rows:
     mean and p99 |logprob difference| and the share of assistant tokens that change side of
     the STM threshold (perplexity 2.5); the same for the naive loop.

The machine's load from other processes during the run is printed: figures are comparable
within one run only.

Run: .venv/bin/python bench/score_cpu.py [--min-tokens 50000] [--model smollm2-135m]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOURCES = ("data/sample.jsonl", "data/arithmetic.jsonl")
STM_THRESHOLD = 2.5
WARMUP_ROWS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--min-tokens", type=int, default=50_000)
    parser.add_argument("--batch-tokens", type=int, default=1024, help="the model-shape matmuls' first dimension")
    parser.add_argument("--naive-budget", type=float, help="stop the naive loop after this many seconds (on a slow or "
                        "loaded machine); its figures are then over the rows it scored")
    parser.add_argument("--unique-rows", type=int, help="only the first N data rows (a quick check of the bench itself)")
    parser.add_argument("--only", choices=("naive", "matmul"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        work = Path(args.workdir)
        result = {"naive": measure_naive, "matmul": measure_matmul}[args.only](args, work)
        (work / f"{args.only}.json").write_text(json.dumps(result))
        return
    started, cpu_before = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        work = Path(tmp)
        unique, rows = write_inputs(args, work)
        results = {"matmul": timed_child(args, work, "matmul")}
        results["startup"] = run_ftprep(args, work, "startup", work / "rows.jsonl", "--limit", str(WARMUP_ROWS))
        results["default"] = run_ftprep(args, work, "default", work / "rows.jsonl")
        results["naive"] = timed_child(args, work, "naive")
        results["fp32"] = run_ftprep(args, work, "fp32", work / "unique.jsonl", "--dtype", "float32")
        accuracy = {name: compare(work, name, unique) for name in ("default", "naive")}
    report(args, rows, unique, results, accuracy)
    wall = time.perf_counter() - started
    machine, mine = (after - before for after, before in zip(cpu_seconds(), cpu_before))
    others = max(0.0, machine - mine) / (wall * os.cpu_count())
    print(f"total wall time {wall:.0f} s; other processes used {100 * others:.0f} % of the CPUs meanwhile"
          + ("  (WARNING: the figures above are skewed by that load)" if others > 0.05 else ""))


# -- parent ----------------------------------------------------------------------------------


def write_inputs(args, work: Path) -> tuple[int, int]:
    """unique.jsonl: the data rows once; rows.jsonl: repeated under new ids to >= min_tokens."""
    from ftprep.models import load_tokenizer, resolve_model
    from ftprep.stages.tokenization import ChatTokenizer, TokenizedRow

    rows = [json.loads(line) for source in SOURCES for line in (ROOT / source).read_text().splitlines() if line.strip()]
    rows = rows[: args.unique_rows]
    chat = ChatTokenizer(load_tokenizer(resolve_model(args.model)))
    tokenized = chat([row["messages"] for row in rows])
    # Only rows ftprep scores, so that every run holds the same rows in the same order.
    rows = [row for row, result in zip(rows, tokenized) if isinstance(result, TokenizedRow)]
    tokens_once = sum(len(result.input_ids) for result in tokenized if isinstance(result, TokenizedRow))
    copies = -(-args.min_tokens // tokens_once)
    (work / "unique.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with open(work / "rows.jsonl", "w") as out:
        for copy in range(copies):
            for row in rows:
                out.write(json.dumps({**row, "id": f"{row['id']}-{copy}"}) + "\n")
    return len(rows), len(rows) * copies


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the whole machine (/proc/stat) and by this process and its children."""
    with open("/proc/stat") as handle:
        fields = [int(value) for value in handle.readline().split()[1:]]
    machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    mine = sum(usage.ru_utime + usage.ru_stime
               for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
    return machine, mine


def timed_child(args, work: Path, name: str) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--workdir", str(work),
               "--model", args.model, "--batch-tokens", str(args.batch_tokens)]
    if args.naive_budget:
        command += ["--naive-budget", str(args.naive_budget)]
    print(f"running {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return {**json.loads((work / f"{name}.json").read_text()), "process_seconds": time.perf_counter() - started}


def run_ftprep(args, work: Path, name: str, source: Path, *options: str) -> dict:
    """`ftprep score` as a user runs it, in a process of its own."""
    from ftprep.manifest import open_run

    script = Path(sys.executable).parent / "ftprep"
    output = work / name
    command = [str(script), "score", str(source), "-o", str(output), "--model", args.model, "--device", "cpu", *options]
    print(f"running {name}: ftprep {' '.join(command[1:])}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    stats = json.loads((output / "stats.json").read_text())
    manifest = open_run(output)
    return {"process_seconds": seconds, "tokens": stats["tokens"], "steady": stats.get("tokens_per_second"),
            "dtype": manifest.model.dtype, "folder": str(output)}


def scored_logprobs(folder: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Logprobs and assistant mask of the first `rows` rows, positions 1.. of each row, concatenated."""
    import pyarrow as pa

    from ftprep.writers import read_shards

    table = pa.concat_tables(list(read_shards(Path(folder)))).slice(0, rows)
    logprobs = [np.asarray(values, dtype=np.float64)[1:] for values in table.column("logprobs").to_pylist()]
    assistant = [np.asarray(values, dtype=bool)[1:] for values in table.column("assistant_mask").to_pylist()]
    return np.concatenate(logprobs), np.concatenate(assistant)


def compare(work: Path, name: str, unique: int) -> dict:
    """The `name` run against ftprep in float32, on the assistant tokens of the unique rows."""
    exact, assistant = scored_logprobs(str(work / "fp32"), unique)
    if name == "naive":
        other = np.load(work / "naive_logprobs.npy")[: len(exact)]
        exact, assistant = exact[: len(other)], assistant[: len(other)]  # a naive loop cut by --naive-budget
    else:
        other, _ = scored_logprobs(str(work / name), unique)
    keep = assistant & ~np.isnan(exact)
    difference = np.abs(other[keep] - exact[keep])
    threshold = -np.log(STM_THRESHOLD)
    return {"mean": float(difference.mean()), "p99": float(np.percentile(difference, 99)),
            "flips": float(np.mean((other[keep] < threshold) != (exact[keep] < threshold))), "tokens": int(keep.sum())}


def report(args, rows: int, unique: int, results: dict, accuracy: dict) -> None:
    matmul, default, naive = results["matmul"], results["default"], results["naive"]
    tokens = default["tokens"]
    print()
    print(f"model {args.model}: {matmul['linear_params'] / 1e6:.1f}M weights in linear layers, "
          f"{matmul['flops_per_token'] / 1e6:.0f} MFLOP/token; input {rows} rows ({unique} unique), {tokens:,} tokens; "
          f"torch threads {matmul['threads']}")
    print("matmul peaks (GFLOP/s), measured now:")
    for name, shape in matmul["shapes"].items():
        print(f"  {name:<34} fp32 {shape['float32']:7.1f}   bf16 {shape['bfloat16']:7.1f}")
    ceilings = {dtype: matmul["model_gflops"][dtype] * 1e9 / matmul["flops_per_token"] for dtype in ("float32", "bfloat16")}
    print(f"ceilings at the model's shapes: fp32 {ceilings['float32']:,.0f} tok/s, bf16 {ceilings['bfloat16']:,.0f} tok/s")
    print()
    whole = tokens / default["process_seconds"]
    naive_whole = naive["tokens"] / naive["process_seconds"]
    naive_steady = naive["tokens"] / naive["seconds"]
    print(f"start-up: ftprep score on {WARMUP_ROWS} rows, whole process   {results['startup']['process_seconds']:6.1f} s")
    print(f"ftprep score default ({default['dtype']}), whole process   {whole:7.0f} tok/s  ({default['process_seconds']:.0f} s)")
    print(f"ftprep score default, steady (stats.json)        {default['steady']:7.0f} tok/s")
    print(f"naive bf16 loop, whole process                   {naive_whole:7.0f} tok/s  ({naive['process_seconds']:.0f} s, "
          f"{naive['rows']} of {rows} rows, {naive['tokens']:,} tokens)")
    print(f"naive bf16 loop, steady                          {naive_steady:7.0f} tok/s")
    print()
    print(f"ratio default / naive, whole process      {whole / naive_whole:5.2f}  (target >= 1.8)")
    print(f"ratio default / naive, steady             {default['steady'] / naive_steady:5.2f}")
    dtype_ceiling = ceilings.get(default["dtype"], ceilings["float32"])
    print(f"ratio default steady / {default['dtype']} ceiling   {default['steady'] / dtype_ceiling:5.2f}  (target >= 0.85 of bf16)")
    print(f"ratio naive steady / bf16 ceiling         {naive_steady / ceilings['bfloat16']:5.2f}")
    print()
    for name, label in (("default", f"ftprep default ({default['dtype']})"), ("naive", "naive bf16 loop")):
        figures = accuracy[name]
        print(f"{label} vs ftprep float32, {figures['tokens']} assistant tokens: mean |d logprob| {figures['mean']:.4f} "
              f"nats, p99 {figures['p99']:.3f}, STM flips (ppl {STM_THRESHOLD}) {100 * figures['flips']:.2f} %"
              "  (targets: mean <= 0.01, flips <= 0.5 %)")


# -- children --------------------------------------------------------------------------------


def read_token_rows(args) -> list[list[int]]:
    from ftprep.models import load_tokenizer, resolve_model
    from ftprep.stages.tokenization import ChatTokenizer

    rows = [json.loads(line) for line in (Path(args.workdir) / "rows.jsonl").read_text().splitlines()]
    chat = ChatTokenizer(load_tokenizer(resolve_model(args.model)))
    return [list(result.input_ids) for result in chat([row["messages"] for row in rows])]


def measure_naive(args, work: Path) -> dict:
    """The paper's loop: bf16 model, one row at a time, bf16 log-softmax over the full vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftprep.models import resolve_model

    rows = read_token_rows(args)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.bfloat16).eval()

    @torch.no_grad()
    def score(ids: list[int]) -> np.ndarray:
        input_ids = torch.tensor([ids])
        logprobs = torch.log_softmax(model(input_ids).logits.to(torch.bfloat16), -1)
        return logprobs[0, :-1].gather(-1, input_ids[0, 1:, None]).squeeze(-1).float().numpy()

    for ids in rows[:WARMUP_ROWS]:
        score(ids)
    started, parts, tokens = time.perf_counter(), [], 0
    for ids in rows:
        parts.append(score(ids))
        tokens += len(ids)
        if args.naive_budget and time.perf_counter() - started > args.naive_budget:
            break
    seconds = time.perf_counter() - started
    np.save(work / "naive_logprobs.npy", np.concatenate(parts))
    return {"seconds": seconds, "tokens": tokens, "rows": len(parts)}


def measure_matmul(args, work: Path) -> dict:
    import torch
    from transformers import AutoConfig

    from ftprep.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(args.model))
    config = getattr(config, "text_config", config)
    hidden, intermediate, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate
    linear_params = config.num_hidden_layers * per_layer + hidden * vocab
    n = args.batch_tokens
    shapes = {"square 2048": (2048, 2048, 2048), "square 4096": (4096, 4096, 4096),
              f"mlp up {n}x{hidden}x{intermediate}": (n, hidden, intermediate),
              f"mlp down {n}x{intermediate}x{hidden}": (n, intermediate, hidden),
              f"attention {n}x{hidden}x{hidden}": (n, hidden, hidden),
              f"lm head {n}x{hidden}x{vocab}": (n, hidden, vocab)}

    def peak(m: int, k: int, n_: int, dtype) -> float:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n_, dtype=dtype)
        a @ b  # warm-up
        repeats = max(2, int(2e10 / (2 * m * k * n_)))
        best = float("inf")
        for _ in range(3):  # best of three: the figure is a ceiling
            started = time.perf_counter()
            for _ in range(repeats):
                a @ b
            best = min(best, (time.perf_counter() - started) / repeats)
        return 2 * m * k * n_ / best / 1e9

    measured = {name: {dtype: peak(*shape, getattr(torch, dtype)) for dtype in ("float32", "bfloat16")}
                for name, shape in shapes.items()}
    # The model's time per token: each linear layer's FLOPs at its own shape's rate.
    flops = {"attention": hidden * head_dim * (2 * heads + 2 * kv_heads), "mlp up": 2 * hidden * intermediate,
             "mlp down": hidden * intermediate}
    model_gflops = {}
    for dtype in ("float32", "bfloat16"):
        rate = {part: next(value[dtype] for name, value in measured.items() if name.startswith(part))
                for part in ("attention", "mlp up", "mlp down", "lm head")}
        seconds = (config.num_hidden_layers * sum(2 * flops[part] / rate[part] for part in flops)
                   + 2 * hidden * vocab / rate["lm head"])
        model_gflops[dtype] = 2 * linear_params / seconds
    return {"shapes": measured, "model_gflops": model_gflops, "linear_params": linear_params,
            "flops_per_token": 2 * linear_params, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    main()
