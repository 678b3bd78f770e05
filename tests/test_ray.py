"""--engine ray: the same output as the local engine, on a local Ray instance with two CPU
workers; resume across engines; resources sized so a 2-core machine cannot deadlock."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO, load_table, progress_lines, read_jsonl
from conftest import (
    run_cli_process as run_cli,  # the commands in a process of their own: a Ray driver in this one outlives ray.shutdown() and is ended when the cluster stops
)

from ftprep.commands.score import ScoreCommand, ScoreSettings
from ftprep.engines import EngineOptions, RayEngine, worker_resources
from ftprep.stages.errors import FtprepError

FLOAT_COLUMNS = {"logprobs", "entropy", "kept_perplexity", "ground_truth_perplexity", "loss_weights"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head on this machine, as `ray start --head` makes one: commands join it with --ray-address.

    Started in another directory than the commands run in, as on a real cluster: its workers
    must not depend on the command's working directory (relative paths)."""
    ray = Path(sys.executable).parent / "ray"
    port = free_port()
    subprocess.run([str(ray), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
                    "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, capture_output=True, cwd=tmp_path_factory.mktemp("ray-head"))
    yield f"127.0.0.1:{port}"
    subprocess.run([str(ray), "stop"], capture_output=True)


# A client that names the head's address must send the token `ray start` set up (Ray 2.59 and
# later); `auto` finds a cluster on this machine, token included.
TOKEN_AUTH = {**os.environ, "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory):
    """data/sample.jsonl with the bad rows in the middle: rejects must line up too."""
    lines = (DATA / "sample.jsonl").read_text().splitlines(keepends=True)
    path = tmp_path_factory.mktemp("ray-input") / "mixed.jsonl"
    path.write_text("".join(lines[:20]) + (DATA / "bad_rows.jsonl").read_text() + "".join(lines[20:]))
    return path


@pytest.fixture(scope="module")
def local_scored(tmp_path_factory, mixed_input, tiny_model_dir):
    output = tmp_path_factory.mktemp("local") / "scored"
    run_cli("score", mixed_input, "-o", output, "--shard-rows", 7, "--model", tiny_model_dir, "--batch-tokens", 256)
    return output


def assert_same_output(local: Path, ray: Path):
    """Rows, order, columns and values (floats within tolerance), rejects, counts and manifest."""
    expected, got = load_table(local), load_table(ray)
    assert got.column_names == expected.column_names and got.num_rows == expected.num_rows
    for name in expected.column_names:
        if name in FLOAT_COLUMNS:
            a, b = expected.column(name).to_pylist(), got.column(name).to_pylist()
            flat_a = np.array(list(_flatten(a)), dtype=np.float64)
            flat_b = np.array(list(_flatten(b)), dtype=np.float64)
            np.testing.assert_allclose(flat_b, flat_a, rtol=1e-5, atol=1e-5, equal_nan=True, err_msg=name)
        else:
            assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name
    assert read_jsonl(ray / "rejects.jsonl") == read_jsonl(local / "rejects.jsonl")
    assert (sorted(p.name for p in ray.glob("data-*.arrow")) == sorted(p.name for p in local.glob("data-*.arrow")))
    stats = [json.loads((folder / "stats.json").read_text()) for folder in (local, ray)]
    assert {k: v for k, v in stats[1].items() if "second" not in k} == {k: v for k, v in stats[0].items() if "second" not in k}
    manifests = [json.loads((folder / "ftprep.json").read_text()) for folder in (local, ray)]
    for manifest in manifests:
        for given_path in ("output", "input", "scored", "against"):  # as typed; resolved paths are compared
            manifest["config"].pop(given_path, None)
    assert manifests[1] == manifests[0]


def _flatten(values):
    for value in values:
        if isinstance(value, list):
            yield from _flatten(value)
        else:
            yield np.nan if value is None else value


@pytest.mark.slow  # runs the model where the fast tier's guard cannot see it (another process, vLLM)
def test_score_on_ray_equals_local(tmp_path, mixed_input, local_scored, tiny_model_dir):
    """The default: a Ray instance started by the command, two CPU workers, one model each."""
    result = run_cli("score", mixed_input, "-o", tmp_path / "ray", "--shard-rows", 7, "--model", tiny_model_dir, "--batch-tokens", 256,
                     "--engine", "ray", "--num-workers", 2, timeout=600, env={**os.environ, "FTPREP_PROGRESS_SECONDS": "0"})
    assert "45 rows written, 7 rejected" in result.stdout
    assert_same_output(local_scored, tmp_path / "ray")
    # The workers' batches move the bar, not only the 8 shards' commits; it ends on stats.json.
    lines = progress_lines(result.stderr)
    assert len(lines) > 8 + 4, result.stderr
    assert lines == sorted(lines)
    stats = json.loads((tmp_path / "ray" / "stats.json").read_text())
    assert lines[-1] == (stats["rows_in"], stats["tokens"])
    # Same input and settings: the output is complete whichever engine asks.
    again = run_cli("score", mixed_input, "-o", tmp_path / "ray", "--shard-rows", 7, "--model", tiny_model_dir, "--batch-tokens", 256)
    assert "already complete" in again.stdout


@pytest.mark.slow
def test_ray_resumes_a_run_the_local_engine_left(tmp_path, mixed_input, local_scored, ray_cluster, monkeypatch, tiny_model_dir):
    from functools import partial

    from ftprep.runner import run
    from ftprep.stages.score import ScoreStage

    output = tmp_path / "scored"
    calls = []
    original = ScoreStage.__call__

    def stop_after_two_shards(self, table, rejects):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, table, rejects)

    monkeypatch.setattr(ScoreStage, "__call__", stop_after_two_shards)
    with pytest.raises(KeyboardInterrupt):
        run(partial(ScoreCommand, ScoreSettings(input=str(mixed_input), output=str(output), shard_rows=7, model=tiny_model_dir,
                                            batch_tokens=256)), echo=lambda *_: None)
    partial = output / ".ftprep-partial"
    done = sorted(p.name for p in partial.glob("shard-*.arrow"))
    assert done == ["shard-00000.arrow", "shard-00001.arrow"]
    inodes = {name: (partial / name).stat().st_ino for name in done}

    run_cli("score", mixed_input, "-o", output, "--shard-rows", 7, "--model", tiny_model_dir, "--batch-tokens", 256, "--engine", "ray",
            "--ray-address", ray_cluster, "--num-workers", 2, timeout=600, env=TOKEN_AUTH)
    # The shards already done were kept as they were, not scored again.
    assert {name: (output / f"data-{name[6:11]}-of-00008.arrow").stat().st_ino for name in done} == inodes
    assert_same_output(local_scored, output)


@pytest.mark.slow
def test_mask_on_ray_equals_local(tmp_path, local_scored, ray_cluster):
    for args in (["--strategy", "quantile", "--scope", "dataset", "--quantile", "0.3"],
                 ["--strategy", "delta", "--against", str(local_scored), "--delta", "0"],
                 ["--strategy", "soft"]):
        local, ray = tmp_path / f"local-{args[1]}", tmp_path / f"ray-{args[1]}"
        run_cli("mask", local_scored, "-o", local, *args)
        # Relative to the command's directory (the repo), which Ray's workers do not share.
        relative = os.path.relpath(local_scored, REPO)
        args = [os.path.relpath(arg, REPO) if arg == str(local_scored) else arg for arg in args]
        run_cli("mask", relative, "-o", ray, *args, "--engine", "ray", "--ray-address", "auto", timeout=300)
        assert_same_output(local, ray)


@pytest.mark.slow
def test_regen_on_ray_equals_local(tmp_path, ray_cluster, tiny_model_dir):
    args = ["data/arithmetic.jsonl", "--limit", 4, "--n", 2, "--max-new-tokens", 24, "--shard-rows", 2,
            "--verify", "math", "--seed", 3]
    run_cli("regen", *args, "-o", tmp_path / "local")
    run_cli("regen", *args, "-o", tmp_path / "ray", "--engine", "ray", "--ray-address", "auto",
            "--num-workers", 2, timeout=600)
    assert_same_output(tmp_path / "local", tmp_path / "ray")


WORKER_ERROR_SCRIPT = """
import sys
from ftprep.engines import EngineOptions, ShardWork, open_engine
from ftprep.progress import Progress
from ftprep.readers import open_source, read_source_shard
from ftprep.stages.errors import FtprepError
from ftprep.writers import ShardedOutput

def refuse(table, rejects):
    raise FtprepError("row 3 cannot be prepared")

engine = open_engine(EngineOptions(engine="ray", ray_address="auto"))
output = ShardedOutput(sys.argv[2], {"test": "worker error"})
try:
    engine.run(output, engine.shard_reads(open_source(sys.argv[1]), 16), ShardWork(read=read_source_shard, stages=(refuse,)),
               Progress("test", 40))
except FtprepError as error:
    print(f"FtprepError: {error}")
"""


@pytest.mark.slow
def test_a_worker_error_is_one_line_on_the_driver(tmp_path, ray_cluster):
    # A driver of its own: a Ray driver in the test process is ended by Ray once the cluster stops.
    result = subprocess.run([sys.executable, "-c", WORKER_ERROR_SCRIPT, str(DATA / "sample.jsonl"), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.stdout.strip().splitlines()[-1:] == ["FtprepError: row 3 cannot be prepared"], result.stderr


def test_engine_options_are_checked(tmp_path):
    result = run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "x", "--num-workers", 2, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --ray-address, --num-workers and --gpus-per-worker need --engine ray"
    port = free_port()  # nothing listens there
    result = run_cli("mask", tmp_path / "x", "-o", tmp_path / "y", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}",
                     check=False, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot reach the Ray cluster at 127.0.0.1:{port}") and result.stderr.count("\n") == 1
    assert not (tmp_path / "y").exists()


def test_without_ray_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(FtprepError, match=r"pip install 'ftprep\[ray\]'"):
        RayEngine(EngineOptions(engine="ray"))


def test_workers_leave_a_cpu_for_reading_and_tokenizing():
    # The 2-core case that hangs when two workers take a core each.
    assert worker_resources({"CPU": 2.0}, EngineOptions(engine="ray", num_workers=2), "cpu") == (2, 0.5, 0.0, 1)
    assert worker_resources({"CPU": 2.0}, EngineOptions(engine="ray"), "cpu") == (1, 1.0, 0.0, 2)
    for cpus in (1.0, 2.0, 4.0, 64.0):
        for workers in (1, 2, 3, 8):
            count, per_worker, _, threads = worker_resources({"CPU": cpus}, EngineOptions(engine="ray", num_workers=workers), "cpu")
            assert count * per_worker + min(1.0, cpus / 2) <= cpus + 1e-9 and threads >= 1
    # On GPU: one worker per GPU by default, or as many as --gpus-per-worker allows.
    assert worker_resources({"CPU": 16.0, "GPU": 8.0}, EngineOptions(engine="ray"), "cuda") == (8, 1.0, 1.0, 2)
    assert worker_resources({"CPU": 16.0, "GPU": 8.0}, EngineOptions(engine="ray", gpus_per_worker=2), "cuda")[:3] == (4, 1.0, 2)
    with pytest.raises(FtprepError, match="the Ray cluster has 8"):
        worker_resources({"CPU": 16.0, "GPU": 8.0}, EngineOptions(engine="ray", num_workers=9), "cuda")
    with pytest.raises(FtprepError, match="model on the CPU: drop it, or use --device cuda"):
        worker_resources({"CPU": 16.0}, EngineOptions(engine="ray", gpus_per_worker=1), "cpu")
    # Either action of the hint: dropping it, or the model on a GPU.
    assert worker_resources({"CPU": 16.0}, EngineOptions(engine="ray"), "cpu")[:3] == (1, 15.0, 0.0)
    assert worker_resources({"CPU": 16.0, "GPU": 1.0}, EngineOptions(engine="ray", gpus_per_worker=1), "cuda")[:3] == (1, 1.0, 1.0)
