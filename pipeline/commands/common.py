"""Settings that several commands share, each declared once: `limit: int | None = shared.limit()`
in a command's Settings class gives it the option with its help, default and checks."""

from __future__ import annotations

from ftprep.models import DEFAULT_MODEL
from ftprep.settings import REQUIRED, positive, setting
from ftprep.stages.normalize import FORMATS
from ftprep.stages.strategies.threshold import STM_THRESHOLD

DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "hf", "vllm")


def input_path():
    return setting(argument=True, path=True, help="JSONL, JSON, Parquet or CSV file, a save_to_disk folder, or a hub dataset id.")


def output(what: str, default=REQUIRED):
    return setting(default, flags=("-o", "--output"), help=what)


def folder(what: str = "A folder written by ftprep score or mask."):
    """The output folder a command reads (its first argument)."""
    return setting(argument=True, help=what)


def seed(what: str, default: int = 0):
    return setting(default, help=what)


def preview_threshold(what: str):
    """The perplexity above which a view marks tokens on a scored dataset: mask's default threshold."""
    return setting(STM_THRESHOLD, low=1, low_open=True, help=what)


def config_name(where: str):
    return setting("default", help=f"Config (subset) the files become; several configs can share {where}.")


def license(whose: str):
    return setting(None, help=f"License in the card's metadata (default: {whose}, else other).")


def model(what: str = "Alias, model folder, .gguf file or hub id."):
    return setting(DEFAULT_MODEL, help=what)


def chat_template():
    return setting(None, path=True, help="Jinja chat template file: for a model without one (a base model), or to "
                   "override the model's own.")


def input_format():
    return setting(None, flags=("--format",), choices=FORMATS, help="Input format (default: detected).")


def split():
    return setting(None, help="Split of a dataset folder or hub dataset (default: train).")


def limit():
    return positive(help="Only the first N rows.")


def train_on(what: str = "Which assistant turns are trainable."):
    return setting("all", choices=("all", "last"), help=what)


def backend(what: str = "Scoring engine; auto: vllm on a CUDA GPU when installed, else hf."):
    return setting("auto", choices=BACKENDS, help=what)


def batch_tokens(what: str = "Token budget of one forward pass, padding included (default: 1024 on CPU, 16384 on GPU)."):
    return positive(help=what)


def trust_remote_code():
    return setting(False, help="Let a model that ships its own Python code run it (only for models you trust).")


def dtype(what: str = "auto: float32 on CPU, bfloat16 on a GPU that has it, else float16."):
    return setting("auto", choices=DTYPES, help=what)


def device():
    return setting("auto", help="auto, cpu, cuda or cuda:N.")


def shard_rows():
    return positive(1000, help="Input rows per output shard (the unit of resume).")


def gpu_memory_utilization():
    return setting(None, low=0.05, high=0.99,
                   help="vllm: share of GPU memory (of RAM on CPU) vLLM takes (default: 0.85 on GPU, 0.3 on CPU).")


def max_num_batched_tokens():
    return positive(help="vllm: tokens per engine step; the logits peak grows with it (default on GPU: sized from the "
                    "vocabulary and the free memory, 512 to 16384; 2048 on CPU).")


def tensor_parallel_size():
    return positive(1, identity=False, help="vllm: GPUs one model is split over, for a model one GPU cannot hold (on Ray, give each "
                    "worker as many: --gpus-per-worker N).")
