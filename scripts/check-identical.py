"""Do two versions of ftprep write the same files? Runs score, regen, mask (every strategy and
target), export, export-config, stats, inspect, report, hft-plan and iv on data/ with each version
and compares every file they write, byte for byte.

    .venv/bin/python scripts/check-identical.py 5c1ac62          # that commit against the working tree
    .venv/bin/python scripts/check-identical.py 5c1ac62 issue-25 # two commits

Each version runs from a copy of its pipeline/ and stages/ laid out as the installed package
(ftprep/ and ftprep/stages/), first on PYTHONPATH, in this venv: the same libraries for both.
Both write to the same absolute folder (moved aside afterwards), so the paths that outputs record
(ftprep.json, cards, snippets) are the same on both sides and need no rewriting.

What is not compared, and why:
- stats.json and what `ftprep stats` prints of it: `seconds` and every `*_per_second`: wall-clock
  timings, different on every run.
- the iv sidecar (iv.json): `seconds`, for the same reason.
- iv.safetensors: compared by its tensors and metadata, not its bytes: safetensors writes the
  metadata keys in hash order, which differs from process to process.
- .ftprep-push/<config>/.staged.json: the staging cache's key, which holds the shards' mtimes.
- ftprep.json and the file manifests: the key `schema_version`, which the typed manifest adds (the
  point of the change); every other key, its value and the key order must match.
- files that only the newer version writes and that ADDED names (the run records of hft-plan and
  iv) are listed, not failed.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
TIMING_KEYS = ("seconds",)
ADDED = (".ftprep.json",)  # endings of files only a version with run records for single-file outputs writes


def commands(out: Path) -> list[list[str]]:
    """Every command of the check, in order; `out` is the folder they all write into."""
    sample, scored, against = str(DATA / "sample.jsonl"), str(out / "scored"), str(out / "scored-b")
    masks = {
        "threshold": [], "quantile": ["--strategy", "quantile"], "quantile-dataset": ["--strategy", "quantile", "--scope", "dataset"],
        "soft": ["--strategy", "soft"], "soft-prob": ["--strategy", "soft", "--weight-fn", "prob", "--min-weight", "0.1"],
        "none": ["--strategy", "none"], "anchor": ["--strategy", "anchor", "--anchors", "first", "--confidence", "0.8"],
        "anchor-axolotl": ["--strategy", "anchor", "--target", "axolotl"], "trl": ["--target", "trl", "--no-keep-eos"],
        "delta": ["--strategy", "delta", "--against", against, "--delta", "0.5"],
    }
    runs = [
        ["score", sample, "-o", scored, "--dtype", "float32", "--top-k", "5", "--shard-rows", "16"],
        ["score", sample, "-o", against, "--dtype", "float32", "--batch-tokens", "300"],
        ["score", str(DATA / "bad_rows.jsonl"), "-o", str(out / "scored-bad"), "--dtype", "float32"],
        ["score", str(DATA / "tools.jsonl"), "-o", str(out / "scored-tools"), "--dtype", "float32",
         "--chat-template", str(DATA / "templates" / "chatml-tools.jinja"), "--train-on", "last"],
        ["score", str(DATA / "formats" / "alpaca.csv"), "-o", str(out / "scored-alpaca"), "--dtype", "float32", "--score-prompt"],
        ["regen", sample, "-o", str(out / "regen"), "--limit", "4", "--n", "2", "--max-new-tokens", "24"],
        ["regen", str(DATA / "arithmetic.jsonl"), "-o", str(out / "regen-math"), "--limit", "3", "--n", "2",
         "--max-new-tokens", "32", "--verify", "math", "--mode", "self"],
    ]
    runs += [["mask", scored, "-o", str(out / f"train-{name}"), *args] for name, args in masks.items()]
    runs += [["export", str(out / "train-soft"), "--parquet", str(out / "parquet-soft")],
             ["export", scored, "--parquet", str(out / "parquet-scored"), "--config-name", "scores"]]
    for target in ("trl", "axolotl", "llama-factory"):
        runs.append(["export-config", str(out / "train-threshold"), "--target", target, ">", str(out / f"config-{target}.txt")])
    runs += [["export-config", str(out / "train-anchor-axolotl"), "--target", "axolotl", ">", str(out / "config-kd.txt")],
             ["export-config", str(out / "train-anchor"), ">", str(out / "config-anchor.txt")],
             ["stats", str(out / "train-soft"), ">", str(out / "stats-soft.txt")],
             ["stats", scored, "--json", ">", str(out / "stats-scored.txt")],
             ["inspect", str(out / "train-soft"), "--row", "3", "--no-color", ">", str(out / "inspect-soft.txt")],
             ["inspect", scored, "--row", "1", "--threshold", "3", "--color", ">", str(out / "inspect-scored.txt")],
             ["inspect", str(out / "regen"), "--row", "0", ">", str(out / "inspect-regen.txt")],
             ["report", str(out / "train-threshold"), "-o", str(out / "report-threshold.html")],
             ["report", scored, "-o", str(out / "report-scored.html"), "--threshold", "2"],
             ["hft-plan", "-o", str(out / "hft" / "plan.json"), "--axolotl-yaml", str(out / "hft" / "unfrozen.yml"), "--seed", "3"],
             ["iv", str(DATA / "arithmetic.jsonl"), "-o", str(out / "iv" / "iv.safetensors"), "--prompts", "4", "--layers", "13-14",
              "--heads", "3"]]
    return runs


def package_tree(ref: str | None, into: Path) -> Path:
    """pipeline/ and stages/ of `ref` (None: the working tree) as an importable ftprep package."""
    source = into / "source"
    source.mkdir(parents=True)
    if ref is None:
        for folder in ("pipeline", "stages"):
            shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "pipeline", "stages"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    site = into / "site"
    shutil.copytree(source / "pipeline", site / "ftprep")
    shutil.copytree(source / "stages", site / "ftprep" / "stages")
    return site


def run_version(ref: str | None, work: Path, out: Path) -> float:
    """Every command with one version, writing under `out`; returns the seconds it took."""
    shutil.rmtree(work, ignore_errors=True)
    site = package_tree(ref, work)
    env = {**os.environ, "PYTHONPATH": str(site), "FTPREP_PROGRESS_SECONDS": "3600", "NO_COLOR": ""}
    started = time.perf_counter()
    for args in commands(out):
        redirect = args.index(">") if ">" in args else None
        argv, stdout_path = (args[:redirect], args[redirect + 1]) if redirect is not None else (args, None)
        Path(out).mkdir(parents=True, exist_ok=True)
        result = subprocess.run([sys.executable, "-c", "from ftprep.cli import main; main()", *argv], cwd=out.parent,
                                env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{ref or 'working tree'}: ftprep {' '.join(argv)} failed:\n{result.stderr[-3000:]}")
        if stdout_path:
            Path(stdout_path).write_text(result.stdout)
        print(f"  {ref or 'working tree'}: ftprep {argv[0]} {Path(argv[1]).name if len(argv) > 1 else ''} ok", flush=True)
    return time.perf_counter() - started


def comparable(path: Path):
    """What of a file must match: its bytes, or for the files with timings, their JSON without them."""
    if path.name == ".staged.json":
        return None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as handle:
            return handle.metadata(), {name: handle.get_tensor(name).tobytes() for name in handle.keys()}
    if path.name.startswith("stats-") and path.suffix == ".txt":  # `ftprep stats` output, the table or --json
        text = path.read_text()
        if text.lstrip().startswith("{"):
            return list(ordered_items(without_timings(json.loads(text))))
        return [line for line in text.splitlines() if not line.split(":")[0].strip().endswith(TIMING_KEYS + ("_per_second",))]
    if path.name == "stats.json":
        return list(ordered_items(without_timings(json.loads(path.read_text()))))
    if path.name == "iv.json":
        data = json.loads(path.read_text())
        data.pop("seconds", None)
        return data
    if path.name == "ftprep.json" or path.name.endswith(".ftprep.json"):
        data = json.loads(path.read_text())
        data.pop("schema_version", None)
        return list(ordered_items(data))
    return path.read_bytes()


def without_timings(stats):
    if isinstance(stats, dict):
        return {key: without_timings(value) for key, value in stats.items()
                if key not in TIMING_KEYS and not key.endswith("_per_second")}
    return stats


def ordered_items(value, prefix=""):
    """Every (path, value) of a JSON document in order: equal lists mean equal keys, order and values."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from ordered_items(item, f"{prefix}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from ordered_items(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def compare(before: Path, after: Path) -> tuple[list[str], list[str], int]:
    """(differences, files only the newer version wrote, files compared)."""
    names_before = {path.relative_to(before) for path in before.rglob("*") if path.is_file()}
    names_after = {path.relative_to(after) for path in after.rglob("*") if path.is_file()}
    problems = [f"missing in the newer version: {name}" for name in sorted(names_before - names_after)]
    added = sorted(str(name) for name in names_after - names_before)
    problems += [f"written only by the newer version: {name}" for name in added if not name.endswith(ADDED)]
    for name in sorted(names_before & names_after):
        if filecmp.cmp(before / name, after / name, shallow=False):
            continue
        if comparable(before / name) != comparable(after / name):
            problems.append(f"differs: {name}")
    return problems, added, len(names_before & names_after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="commit of the version to compare against")
    parser.add_argument("after", nargs="?", help="commit of the newer version (default: the working tree)")
    parser.add_argument("--keep", help="folder to keep both versions' outputs in (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="ftprep-identical-")).resolve()
    out = work / "out"
    results = {}
    for side, ref in (("before", args.before), ("after", args.after)):
        shutil.rmtree(out, ignore_errors=True)
        seconds = run_version(ref, work / "trees" / side, out)
        shutil.rmtree(work / side, ignore_errors=True)
        out.rename(work / side)
        results[side] = seconds
    problems, added, count = compare(work / "before", work / "after")
    print(f"{count} files compared ({results['before']:.0f} s before, {results['after']:.0f} s after); outputs in {work}")
    for name in added:
        print(f"  new file (expected): {name}" if name.endswith(ADDED) else f"  new file: {name}")
    for problem in problems:
        print(f"  {problem}")
    print("identical" if not problems else f"{len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
