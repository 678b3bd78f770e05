"""Memory and throughput at scale: `ftprep score` on 1x and 10x the same rows, per engine.

Each run is the real command in its own process. While it runs, a sampler adds up the
proportional set size (PSS: shared pages split between the processes that map them) of the
command and every process under it, Ray's included, and notes when each shard is committed.
Prints, per run: peak memory, start-up (to the first committed shard), and steady tokens/s
(from the time every worker has committed a shard to the last commit), then the ratios
10x / 1x (targets: within 10 %) and 2 workers / 1 worker. Shards committed less than a
sampling interval before the run ends may go unseen; the rate counts only the seen ones.

Run: .venv/bin/python bench/scale.py [--engines local,ray] [--sizes 1,10] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_input(source: Path, times: int, folder: Path) -> Path:
    """`times` copies of the source rows, each copy with its own ids."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    path = folder / f"rows-x{times}.jsonl"
    with path.open("w") as handle:
        for copy in range(times):
            for index, row in enumerate(rows):
                handle.write(json.dumps({**row, "id": f"{row.get('id', index)}-copy{copy}"}) + "\n")
    return path


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Peak PSS of a process tree, and when each shard of the output was committed."""

    def __init__(self, pid: int, output: Path, interval: float = 0.25):
        super().__init__(daemon=True)
        self.pid, self.partial, self.interval = pid, output / ".ftprep-partial", interval
        self.peak = 0
        self.commits: dict[str, tuple[float, int]] = {}  # shard -> (time, tokens)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, sum(pss_bytes(pid) for pid in process_tree(self.pid)))
            for meta in self.partial.glob("shard-*.json") if self.partial.is_dir() else []:
                if meta.name not in self.commits:
                    try:
                        tokens = json.loads(meta.read_text())["stats"].get("tokens", 0)
                    except (OSError, ValueError):
                        continue
                    self.commits[meta.name] = (time.monotonic(), tokens)
            self.done.wait(self.interval)


def run_score(rows: Path, output: Path, engine: str, workers: int, shard_rows: int) -> dict:
    command = [str(Path(sys.executable).parent / "ftprep"), "score", str(rows), "-o", str(output),
               "--shard-rows", str(shard_rows), "--engine", engine]
    if engine == "ray":
        command += ["--num-workers", str(workers)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    sampler = Sampler(process.pid, output)
    sampler.start()
    stdout, stderr = process.communicate()
    wall = time.monotonic() - started
    sampler.done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    commits = sorted(sampler.commits.values())
    # Steady state starts once every worker has committed a shard: before, some are still loading.
    if len(commits) < workers + 2:
        raise SystemExit("too few shards to measure a steady rate: lower --shard-rows")
    steady_tokens = sum(tokens for _, tokens in commits[workers:])
    stats = json.loads((output / "stats.json").read_text())
    return {"wall": wall, "startup": commits[0][0] - started, "tokens": stats["tokens"], "shards": len(commits),
            "steady_tok_s": steady_tokens / (commits[-1][0] - commits[workers - 1][0]), "peak_pss_mib": sampler.peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default=str(REPO / "data" / "sample.jsonl"))
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--sizes", default="1,10", help="Copies of the input, e.g. 1,10.")
    parser.add_argument("--workers", default="1,2", help="ray: worker counts to compare.")
    parser.add_argument("--shard-rows", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    runs = [(engine, workers) for engine in args.engines.split(",")
            for workers in ([int(w) for w in args.workers.split(",")] if engine == "ray" else [1])]
    results = {}
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        folder = Path(tmp)
        inputs = {size: build_input(Path(args.input), size, folder) for size in sizes}
        for engine, workers in runs:
            for size in sizes:
                label = f"{engine}" + (f" x{workers} workers" if engine == "ray" else "")
                result = run_score(inputs[size], folder / f"out-{engine}-{workers}-{size}", engine, workers, args.shard_rows)
                results[(engine, workers, size)] = result
                print(f"{label:<18} {size:>3}x  {result['tokens']:>8} tokens  {result['shards']:>4} shards  "
                      f"peak PSS {result['peak_pss_mib']:7.0f} MiB  start-up {result['startup']:5.1f} s  "
                      f"steady {result['steady_tok_s']:6.0f} tok/s  wall {result['wall']:6.1f} s", flush=True)

    print(f"\n{os.cpu_count()} CPUs; ratios (10x / 1x: target within 0.90-1.10)")
    small, large = min(sizes), max(sizes)
    for engine, workers in runs:
        if small != large:
            a, b = results[(engine, workers, small)], results[(engine, workers, large)]
            label = f"{engine}" + (f" x{workers}" if engine == "ray" else "")
            print(f"{label:<10} peak memory {b['peak_pss_mib'] / a['peak_pss_mib']:5.2f}   "
                  f"tokens/s {b['steady_tok_s'] / a['steady_tok_s']:5.2f}")
    ray_workers = sorted(workers for engine, workers in runs if engine == "ray")
    if len(ray_workers) > 1:
        base = results[("ray", ray_workers[0], large)]["steady_tok_s"]
        for workers in ray_workers[1:]:
            print(f"ray {workers} workers / {ray_workers[0]} worker tokens/s ({large}x): "
                  f"{results[('ray', workers, large)]['steady_tok_s'] / base:5.2f}")
    if "local" in args.engines.split(",") and "ray" in args.engines.split(","):
        print(f"ray x{ray_workers[0]} / local tokens/s ({large}x): "
              f"{results[('ray', ray_workers[0], large)]['steady_tok_s'] / results[('local', 1, large)]['steady_tok_s']:5.2f}")


if __name__ == "__main__":
    main()
