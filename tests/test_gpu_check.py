"""bench/gpu_check.sh, the prepared GPU check, at toy size on the CPU: so that it runs on the day
a GPU machine is lent (there: torch and transformers, no network, ftprep from the checkout)."""

import importlib.util
import json
import os
import subprocess
import sys

from conftest import REPO


def test_the_gpu_check_runs_at_toy_size_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    result = subprocess.run(["sh", str(REPO / "bench" / "gpu_check.sh"), "--toy"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device CPU, torch ")
    assert [line.split()[0] for line in lines[1:]] == ["qwen2-toy", "llama-toy", "gemma3-toy"]
    assert all(" tok/s, " in line and "greedy agreement 100.0% ok" in line for line in lines[1:])
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    results = {entry["model"]: entry for entry in summary["results"]}
    assert set(results) == {"qwen2-toy", "llama-toy", "gemma3-toy"}
    for entry in results.values():
        assert entry["agrees"] and entry["mean_abs_diff"] < 1e-4 and entry["greedy_agreement"] == 1.0
        assert entry["tokens_per_second"] > 0 and entry["achieved_flops"] > 0 and entry["scored"] > 0
    assert "load_seconds" in results["qwen2-toy"]  # the first model went through ftprep.models.load_model


def test_the_flop_count_follows_the_attention_window():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = bench  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    attended_pairs = bench.attended_pairs

    assert attended_pairs(4, None) == 10 and attended_pairs(4, 8) == 10
    assert attended_pairs(6, 2) == 3 + 4 * 2  # the first two queries see 1 and 2 keys, the rest 2 each
