"""`ftprep regen`: the model's own checked rewrites of the assistant turns (SDFT).

read -> normalize -> generate, check, score candidates -> write, one shard of input rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click

from ftprep.commands import common as shared
from ftprep.commands import shard_command
from ftprep.commands.model_run import ModelRun, model_info
from ftprep.engines import ShardWork
from ftprep.manifest import Counts, RunManifest, TokenizerInfo
from ftprep.models import context_length
from ftprep.readers import input_format, read_source_shard
from ftprep.runtime import library_versions, longest_row, make_scorer
from ftprep.settings import Settings, positive, setting
from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.normalize import NormalizeStage
from ftprep.stages.regen import RegenStageSettings
from ftprep.stages.regen.checks import VERIFIERS
from ftprep.stages.regen.generate import Sampling
from ftprep.stages.regen.prompts import MODES
from ftprep.stages.score import default_batch_tokens

# The stage and its sampler own the defaults of what they decide; the command only declares
# them as options.
STAGE_DEFAULTS = RegenStageSettings()
SAMPLING_DEFAULTS = Sampling()


@dataclass(frozen=True, kw_only=True)
class RegenSettings(Settings):
    input: str = shared.input_path()
    output: str = shared.output("Folder for the regenerated dataset (messages format).")
    model: str = shared.model("Alias, model folder, .gguf file or hub id (the model you will fine-tune).")
    chat_template: str | None = shared.chat_template()
    format: str | None = shared.input_format()
    split: str | None = shared.split()
    limit: int | None = shared.limit()
    train_on: str = shared.train_on("Which assistant turns to rewrite.")
    mode: str = setting(STAGE_DEFAULTS.mode, choices=MODES,
                        help="rephrase: the model sees the reference answer as a guide (SDFT); self: the original prompt alone.")
    template: str | None = setting(None, path=True,
                                   help="rephrase: text file with {instruction} and {reference} (see --print-template).")
    n: int = setting(SAMPLING_DEFAULTS.n, low=1, high=64, help="Candidates sampled per turn.")
    temperature: float = setting(SAMPLING_DEFAULTS.temperature, low=0, low_open=True, help="Sampling temperature.")
    top_p: float = setting(SAMPLING_DEFAULTS.top_p, low=0, high=1, low_open=True, help="Nucleus sampling mass.")
    max_new_tokens: int = positive(STAGE_DEFAULTS.max_new_tokens, help="Longest candidate; longer ones are rejected.")
    seed: int = shared.seed("Sampling seed: the same seed gives the same output.", default=STAGE_DEFAULTS.seed)
    length_ratio: float = setting(STAGE_DEFAULTS.length_ratio, low=1, help="Reject candidates more than this many times longer or shorter than the reference.")
    beat_ground_truth: bool = setting(STAGE_DEFAULTS.beat_ground_truth, toggle=True,
                                      help="Accept only rewrites the model finds likelier (lower perplexity) than the ground truth.")
    verify: str = setting(STAGE_DEFAULTS.verify, choices=VERIFIERS,
                          help="math: same final number as the reference; exact: same normalized text; regex: same --pattern capture.")
    pattern: str | None = setting(None, help="--verify regex: the answer's pattern; group 1 (or the whole match) is compared.")
    backend: str = shared.backend("Generation and scoring engine; auto: vllm on a CUDA GPU when installed, else hf.")
    batch_tokens: int | None = shared.batch_tokens("hf scoring: token budget of one forward pass.")
    dtype: str = shared.dtype()
    trust_remote_code: bool = shared.trust_remote_code()
    device: str = shared.device()
    shard_rows: int = shared.shard_rows()
    gpu_memory_utilization: float | None = shared.gpu_memory_utilization()
    max_num_batched_tokens: int | None = shared.max_num_batched_tokens()
    tensor_parallel_size: int = shared.tensor_parallel_size()


def default_generation_tokens(device: str) -> int:
    """Sequences x (prompt + new tokens) per transformers `generate` call: bounds its KV cache."""
    return 32768 if device == "cpu" else 131072


def read_template(settings: RegenSettings) -> str:
    from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE, check_template

    if settings.mode != "rephrase":
        return ""
    if settings.template is None:
        return DEFAULT_TEMPLATE
    path = Path(settings.template)
    if not path.is_file():
        raise SettingError("{template} does not exist: give a text file with {{instruction}} and {{reference}}", field="template",
                           template=Setting("template", settings.template))
    return check_template(path.read_text())


class RegenCommand(ModelRun):
    name = "regen"

    def __init__(self, settings: RegenSettings, executor):
        from ftprep.stages.regen.checks import compile_pattern

        self.template = read_template(settings)
        compile_pattern(settings.pattern, settings.verify)  # a bad pattern fails before the model loads
        self.stage_settings = RegenStageSettings(
            mode=settings.mode, template=self.template, train_on=settings.train_on, length_ratio=settings.length_ratio,
            beat_ground_truth=settings.beat_ground_truth, verify=settings.verify, pattern=settings.pattern,
            seed=settings.seed, max_new_tokens=settings.max_new_tokens)
        super().__init__(settings, executor)

    def identity(self) -> dict:
        return {"command": "regen", "settings": self.settings.result_settings(), "template": self.template,
                "input": self.source.identity(), **self.runtime.identity()}

    def work(self) -> ShardWork:
        self.format = input_format(self.source, self.settings.format)
        return ShardWork(read=read_source_shard, stages=(NormalizeStage(self.format),),
                         build_model_stage=partial(build_regen_stage, self.settings, self.stage_settings, self.runtime),
                         columns=tuple(self.schema().names), tokens_key="generated_tokens")

    def schema(self):
        from ftprep.stages.regen import regen_schema

        return regen_schema()

    def finish(self, stats: dict) -> tuple[dict, dict]:
        stats = finish_regen_stats(stats)
        manifest = RunManifest(
            stage="regen",
            config=self.settings.to_dict(),
            format=self.format,
            template=self.template,
            sampling=sampling_of(self.settings).parameters(),
            model=model_info(self.runtime),
            tokenizer=TokenizerInfo(fingerprint=self.runtime.tokenizer_fingerprint),
            versions=library_versions(),
            counts=Counts.from_stats(stats),
        )
        return manifest, stats


def sampling_of(settings: RegenSettings) -> Sampling:
    return Sampling(n=settings.n, temperature=settings.temperature, top_p=settings.top_p,
                    max_new_tokens=settings.max_new_tokens)


def build_regen_stage(settings: RegenSettings, stage_settings, runtime):
    """One model for sampling and scoring, as the scorer loaded it."""
    from ftprep.stages.regen import RegenStage
    from ftprep.stages.regen.generate import HFGenerator, VLLMGenerator

    sampling = sampling_of(settings)
    batch_tokens = settings.batch_tokens or default_batch_tokens(runtime.device)
    model_dir = runtime.local_model_dir()
    row_limit = longest_row(runtime.backend, context_length(model_dir))
    # Prefix caching: the n candidates of a prompt are n requests that would each prefill it.
    scorer = make_scorer(runtime, 0, False, batch_tokens, settings.gpu_memory_utilization,
                         settings.max_num_batched_tokens, seed=settings.seed, longest_row=row_limit,
                         tensor_parallel_size=settings.tensor_parallel_size, prefix_caching=True)
    if runtime.backend == "vllm":
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation_config = None
        generator = VLLMGenerator(scorer.llm, runtime.tokenizer, sampling, generation_config,
                                  per_request_seeds=runtime.device != "cpu")
    else:
        generator = HFGenerator(scorer.model, runtime.tokenizer, sampling, default_generation_tokens(runtime.device))
    return RegenStage(stage_settings, runtime.tokenizer, generator, scorer, row_limit)


def finish_regen_stats(stats: dict) -> dict:
    stats = dict(stats)
    if stats.get("candidates_tried"):
        stats["acceptance_rate"] = stats["candidates_accepted"] / stats["candidates_tried"]
    if stats.get("turns"):
        stats["generated_share"] = stats.get("turns_generated", 0) / stats["turns"]
    if stats.get("perplexity_turns"):
        stats["ground_truth_mean_perplexity"] = stats["ground_truth_perplexity_sum"] / stats["perplexity_turns"]
        stats["kept_mean_perplexity"] = stats["kept_perplexity_sum"] / stats["perplexity_turns"]
    if stats.get("seconds"):
        stats["generated_tokens_per_second"] = stats.get("generated_tokens", 0) / stats["seconds"]
    return stats


def print_template(ctx, param, value):
    if not value or ctx.resilient_parsing:
        return
    from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE

    click.echo(DEFAULT_TEMPLATE)
    ctx.exit()


cli = shard_command("regen", RegenSettings, RegenCommand, extra_params=[
    click.Option(["--print-template"], is_flag=True, is_eager=True, expose_value=False, callback=print_template,
                 help="Print the built-in rephrase template and exit.")])
