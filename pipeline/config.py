"""Run configurations: what a command was asked to do, recorded in ftprep.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

PATH_SETTINGS = ("input", "scored", "against", "template")


class Settings:
    """What every command's configuration can say about itself."""

    def to_dict(self) -> dict:
        return asdict(self)

    def result_settings(self) -> dict:
        """Settings that change the output; a resumed run must share all of them. Paths count
        by what they name, so `./data.jsonl` resumes a run of `data.jsonl`, from any directory."""
        settings = self.to_dict()
        settings.pop("output")
        for key in PATH_SETTINGS:
            if settings.get(key) and Path(settings[key]).expanduser().exists():
                settings[key] = str(Path(settings[key]).expanduser().resolve())
        return settings


@dataclass(frozen=True)
class ScoreConfig(Settings):
    input: str
    output: str
    model: str = "smollm2-135m"
    format: str | None = None  # None: detect from the columns
    split: str | None = None
    limit: int | None = None
    train_on: str = "all"
    max_length: int | None = None
    overlong: str = "drop"
    backend: str = "auto"
    batch_tokens: int | None = None  # None: chosen for the device
    dtype: str = "auto"
    device: str = "auto"
    top_k: int = 0
    score_prompt: bool = False
    shard_rows: int = 1000
    gpu_memory_utilization: float | None = None  # vllm backend; None: chosen for the device
    max_num_batched_tokens: int | None = None  # vllm backend; None: chosen for the device


@dataclass(frozen=True)
class MaskConfig(Settings):
    scored: str
    output: str
    strategy: str = "threshold"
    threshold: float = 2.5
    quantile: float = 0.2
    scope: str = "sample"
    weight_fn: str = "gauss"
    sigma: float = 0.75
    alpha: float = 1.0
    min_weight: float = 0.0
    keep_eos: bool = True
    min_kept: int = 1
    weights: bool | None = None  # None: write loss_weights only when the strategy makes weights
    target: str = "hf"  # hf keeps loss_weights; trl, axolotl, llama-factory take exactly their columns
    against: str | None = None  # delta: the same rows scored under a second model
    delta: float = 2.5  # delta: mask when perplexity under `against` minus perplexity here exceeds this
    anchors: str = "first"  # anchor: the first token of each turn with rank > 1, or all of them
    confidence: float = 1.0  # anchor: c_t, the weight of the label against the reference distribution


@dataclass(frozen=True)
class RegenConfig(Settings):
    input: str
    output: str
    model: str = "smollm2-135m"
    format: str | None = None
    split: str | None = None
    limit: int | None = None
    train_on: str = "all"
    mode: str = "rephrase"  # rephrase: the prompt shows the reference; self: the original prompt alone
    template: str | None = None  # file with {instruction} and {reference}; None: the built-in one
    n: int = 4
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    length_ratio: float = 3.0
    beat_ground_truth: bool = True
    verify: str = "none"
    pattern: str | None = None
    backend: str = "auto"
    batch_tokens: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    shard_rows: int = 1000
    gpu_memory_utilization: float | None = None
    max_num_batched_tokens: int | None = None

    def score_config(self) -> ScoreConfig:
        """How the rewrites are scored: like `ftprep score` with the same engine settings."""
        return ScoreConfig(input=self.input, output=self.output, model=self.model, backend=self.backend,
                           batch_tokens=self.batch_tokens, dtype=self.dtype, device=self.device,
                           gpu_memory_utilization=self.gpu_memory_utilization,
                           max_num_batched_tokens=self.max_num_batched_tokens)


@dataclass(frozen=True)
class IVConfig(Settings):
    input: str
    output: str  # the .safetensors file; the JSON sidecar goes beside it
    model: str = "smollm2-135m"
    format: str | None = None
    split: str | None = None
    limit: int | None = None
    prompts: int = 16  # prompts averaged over and patched into
    heads: int = 10  # heads kept, largest causal effect first
    answer_tokens: int = 4  # first answer tokens whose log-probability measures the effect
    layers: str | None = None  # e.g. "0-9,12"; None: every layer
    seed: int = 0
    dtype: str = "auto"
    device: str = "auto"
