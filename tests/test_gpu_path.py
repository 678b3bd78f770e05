"""The parts of the CUDA path that a CPU can check: the hf backend's logit chunks sized from the
GPU's free memory, weights loaded straight onto the device, and the one line on a GPU that
nvidia-smi sees but torch cannot use. torch's CUDA calls are faked where they are needed."""

import os
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import DATA, flat, hf_scorer, run_cli

GIB = 2**30


def test_gpu_chunks_hold_at_least_1024_positions_within_the_free_memory():
    from ftprep.stages.score.hf import CHUNK_BYTES_PER_ENTRY, gpu_chunk_positions

    # A 262k vocabulary with 60 GiB free: a quarter of it, 3,840 positions (the CPU's 2^23 elements would be 32).
    assert gpu_chunk_positions(262144, 60 * GIB, 16384) == 3840
    assert 3840 * 262144 * CHUNK_BYTES_PER_ENTRY <= 60 * GIB / 4
    # A small vocabulary: never more positions than a batch has tokens.
    assert gpu_chunk_positions(49152, 60 * GIB, 16384) == 16384
    # Little free memory: the 1024 floor where half of it holds them, else what half holds.
    assert gpu_chunk_positions(262144, 12 * GIB, 16384) == 1024
    assert gpu_chunk_positions(262144, 4 * GIB, 16384) == 512
    assert gpu_chunk_positions(262144, 1, 16384) == 1


def test_the_scorer_sizes_its_chunks_from_the_gpu_it_is_on(monkeypatch):
    from ftprep.stages.score.hf import CHUNK_ELEMENTS, chunk_positions_for

    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: asked.append(device) or (60 * GIB, 80 * GIB))
    head = SimpleNamespace(weight=torch.empty(262144, 8, device="meta"))
    on_gpu = SimpleNamespace(device=torch.device("cuda", 1), get_output_embeddings=lambda: head)
    on_cpu = SimpleNamespace(device=torch.device("cpu"), get_output_embeddings=lambda: head)
    assert chunk_positions_for(on_gpu, 16384) == 3840 and asked == [torch.device("cuda", 1)]
    assert chunk_positions_for(on_cpu, 16384) == CHUNK_ELEMENTS // 262144 == 32


@pytest.mark.slow
def test_large_chunks_score_as_small_ones(tiny_model_dir):
    scorer = hf_scorer(tiny_model_dir, top_k=3)
    rng = np.random.default_rng(0)
    rows = [rng.integers(3, 1000, size=length).tolist() for length in (40, 75, 120, 9)]
    table = pa.table({"input_ids": rows, "assistant_mask": [[0] * 4 + [1] * (len(row) - 4) for row in rows]})
    results = {}
    for positions in (1, 7, 1024):
        scorer.chunk_positions = positions
        results[positions] = scorer(table)
    for positions in (7, 1024):
        for name in ("logprobs", "entropy"):
            np.testing.assert_allclose(flat(results[positions], name), flat(results[1], name), rtol=1e-5, atol=1e-5, equal_nan=True)
        np.testing.assert_array_equal(flat(results[positions], "rank"), flat(results[1], "rank"))


def test_weights_load_straight_onto_a_gpu(monkeypatch, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    import ftprep.models as models

    calls = []

    class Loaded(torch.nn.Module):
        def to(self, *args, **kwargs):
            calls.append(("to", args))
            return self

    def from_pretrained(path, **kwargs):
        calls.append(("from_pretrained", kwargs.get("device_map")))
        return Loaded()

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    models.load_model(tiny_model_dir, "bfloat16", "cuda:1")
    assert calls == [("from_pretrained", "cuda:1")]  # placed as it is read, never moved after
    calls.clear()
    models.load_model(tiny_model_dir, "float32", "cpu")
    assert calls == [("from_pretrained", None), ("to", ("cpu",))]


H100_DRIVER_535 = """\
+-----------------------------------------------------------------------------+
| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2     |
|-------------------------------+----------------------+----------------------+
"""


def test_the_line_says_why_torch_cannot_use_the_gpu():
    from ftprep.runtime import unusable_gpu_line

    listed = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)\nGPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)\n"
    line = unusable_gpu_line(listed, H100_DRIVER_535, "2.13.0", "13.0", None)
    assert line.startswith("nvidia-smi sees 2 GPUs (NVIDIA H100 80GB HBM3, driver 535.104.05, CUDA 12.2) but torch cannot use them: ")
    assert "the driver is too old for torch 2.13.0, built for CUDA 13.0" in line and "CUDA_VARIANT=cu129" in line
    assert "\n" not in line
    assert "is a CPU build" in unusable_gpu_line(listed, H100_DRIVER_535, "2.13.0+cpu", None, None)
    assert "CUDA_VISIBLE_DEVICES='' hides them" in unusable_gpu_line(listed, H100_DRIVER_535, "2.13.0", "12.9", "")
    # A CUDA 12.9 build on a CUDA 12.2 driver runs (minor-version compatibility): not the driver, then.
    assert "is_available() is False" in unusable_gpu_line(listed, H100_DRIVER_535, "2.13.0", "12.9", None)
    cuda11 = unusable_gpu_line(listed, H100_DRIVER_535.replace("CUDA Version: 12.2", "CUDA Version: 11.8"), "2.13.0", "13.0", None)
    assert cuda11.endswith("built for CUDA 13.0: update the driver")
    assert unusable_gpu_line("No devices were found\n", "", "2.13.0", "13.0", None) is None


@pytest.fixture
def old_driver_gpu(tmp_path, monkeypatch):
    """A fake nvidia-smi first on PATH that sees one H100 behind a CUDA 12.2 driver, and a torch
    that says it was built for CUDA 13.0 (this CPU torch then behaves as such a torch does there)."""
    tools = tmp_path / "bin"
    tools.mkdir()
    smi = tools / "nvidia-smi"
    smi.write_text('#!/bin/sh\nif [ "$1" = "-L" ]; then echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"; exit 0; fi\n'
                   f"cat <<'EOF'\n{H100_DRIVER_535}EOF\n")
    smi.chmod(0o755)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_device_cuda_fails_with_the_line_and_auto_says_it_once(old_driver_gpu, tmp_path, tiny_model_dir):
    args = ("score", DATA / "sample.jsonl", "--model", tiny_model_dir, "--limit", 2, "--dtype", "float32")
    refused = run_cli(*args, "-o", tmp_path / "cuda", "--device", "cuda", env=old_driver_gpu, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "nvidia-smi sees 1 GPU (NVIDIA H100 80GB HBM3, driver 535.104.05, CUDA 12.2) but torch cannot use it" in refused.stderr
    assert "driver is too old" in refused.stderr and not (tmp_path / "cuda").exists()

    ran = run_cli(*args, "-o", tmp_path / "auto", "--device", "auto", env=old_driver_gpu)
    said = [line for line in ran.stderr.splitlines() if line.startswith("nvidia-smi sees")]
    assert len(said) == 1 and said[0].endswith("; running on the CPU")
    assert (tmp_path / "auto" / "ftprep.json").is_file()
