"""`ftprep score`: every ground-truth token's logprob, rank and entropy under the model.

read -> normalize -> tokenize -> score -> write, one shard of input rows at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from ftprep.commands import common as shared
from ftprep.commands import shard_command
from ftprep.commands.model_run import ModelRun, model_info
from ftprep.engines import ShardWork
from ftprep.manifest import Counts, RunManifest, TokenizerInfo
from ftprep.models import context_length
from ftprep.readers import input_format, read_source_shard
from ftprep.runtime import library_versions, longest_row, make_scorer
from ftprep.settings import Settings, setting
from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.normalize import NormalizeStage
from ftprep.stages.score import ScoreStage, default_batch_tokens, scored_schema
from ftprep.stages.tokenization import ChatTokenizer, TokenizeStage


@dataclass(frozen=True, kw_only=True)
class ScoreSettings(Settings):
    input: str = shared.input_path()
    output: str = shared.output("Folder for the scored dataset.")
    model: str = shared.model()
    chat_template: str | None = shared.chat_template()
    format: str | None = shared.input_format()
    split: str | None = shared.split()
    limit: int | None = shared.limit()
    train_on: str = shared.train_on()
    max_length: int | None = setting(None, low=0, low_open=True, help="Longest row in tokens.")
    overlong: str = setting("drop", choices=("drop", "truncate"), help="What to do with longer rows.")
    backend: str = shared.backend()
    batch_tokens: int | None = shared.batch_tokens()
    dtype: str = shared.dtype("auto: bfloat16 on a CPU with native bfloat16 matmuls (AVX512-BF16, AMX) and on a GPU "
                              "that has it, float16 on an older GPU, float32 on other CPUs.")
    device: str = shared.device()
    top_k: int = setting(0, low=0, high=1000, help="Also store the model's top-k ids and logprobs per token.")
    score_prompt: bool = setting(False, help="Score every token, not only assistant tokens.")
    trust_remote_code: bool = shared.trust_remote_code()
    allow_special_tokens: bool = setting(False, help="Let message text that spells the chat template's control tokens "
                                                     "(e.g. <|im_start|>) act as them; by default such rows are rejected.")
    shard_rows: int = shared.shard_rows()
    gpu_memory_utilization: float | None = shared.gpu_memory_utilization()
    max_num_batched_tokens: int | None = shared.max_num_batched_tokens()
    tensor_parallel_size: int = shared.tensor_parallel_size()


class ScoreCommand(ModelRun):
    name = "score"
    auto_bf16_on_cpu = True

    def __init__(self, settings: ScoreSettings, executor):
        super().__init__(settings, executor)
        self.batch_tokens = settings.batch_tokens or default_batch_tokens(self.device)
        self.chat = None
        check_top_k(settings.top_k, self.runtime.tokenizer)

    def identity(self) -> dict:
        return {"command": "score", "settings": self.settings.result_settings(), "input": self.source.identity(),
                "batch_tokens": self.batch_tokens, **self.runtime.identity()}

    def work(self) -> ShardWork:
        settings = self.settings
        self.format = input_format(self.source, settings.format)
        self.chat = ChatTokenizer(self.runtime.tokenizer, settings.train_on, length_limit(settings, self.runtime.model_dir, self.runtime.backend),
                                  settings.overlong, allow_special_tokens=settings.allow_special_tokens)
        return ShardWork(read=read_source_shard, stages=(NormalizeStage(self.format), TokenizeStage(self.chat)),
                         build_model_stage=partial(build_score_stage, settings, self.runtime, self.batch_tokens),
                         columns=tuple(self.schema().names))

    def schema(self):
        return scored_schema(self.settings.top_k)

    def finish(self, stats: dict) -> tuple[dict, dict]:
        stats = finish_score_stats(stats)
        # With the throughput: what the model computed in (auto differs from machine to machine).
        stats["dtype"] = self.runtime.dtype
        tokenizer = self.runtime.tokenizer
        # Collected per shard, so that a resumed run knows the ones its earlier part saw.
        end_of_turn_ids = (sorted(int(token) for token in stats.pop("end_of_turn_ids", {}))
                           or ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
        manifest = RunManifest(
            stage="score",
            config=self.settings.to_dict(),
            format=self.format,
            model=model_info(self.runtime),
            tokenizer=TokenizerInfo(fingerprint=self.runtime.tokenizer_fingerprint, end_of_turn_ids=tuple(end_of_turn_ids),
                                    uses_generation_markers=self.chat.uses_generation_markers),
            entropy_kind=self.runtime.entropy_kind(),
            versions=library_versions(),
            counts=Counts.from_stats(stats),
        )
        return manifest, stats


def check_top_k(top_k: int, tokenizer) -> None:
    vocabulary = len(tokenizer)
    if top_k > vocabulary:
        raise SettingError("{top_k} is above the model's vocabulary ({vocabulary} tokens): give at most {vocabulary}",
                           field="top_k", top_k=Setting("top_k", top_k), vocabulary=vocabulary)


def length_limit(settings: ScoreSettings, model_dir: str, backend: str) -> int | None:
    """The longest row scored: --max-length, at most what the model takes on `backend` (its
    context; on vLLM one less, for the output token it keeps room for). Longer rows take the
    --overlong path in the tokenizer; vLLM is started for the same limit, so none reaches it, and
    it reserves no KV cache for a context the run never uses."""
    limits = [limit for limit in (settings.max_length, longest_row(backend, context_length(model_dir))) if limit]
    return min(limits) if limits else None


def build_score_stage(settings: ScoreSettings, runtime, batch_tokens: int) -> ScoreStage:
    return ScoreStage(make_scorer(runtime, settings.top_k, settings.score_prompt, batch_tokens,
                                  settings.gpu_memory_utilization, settings.max_num_batched_tokens,
                                  longest_row=length_limit(settings, runtime.local_model_dir(), runtime.backend),
                                  tensor_parallel_size=settings.tensor_parallel_size))


def finish_score_stats(stats: dict) -> dict:
    stats = dict(stats)
    scored = stats.get("assistant_tokens", 0)
    if scored:
        stats["assistant_mean_logprob"] = stats["assistant_logprob_sum"] / scored
        stats["assistant_perplexity"] = float(np.exp(-stats["assistant_mean_logprob"]))
        stats["assistant_greedy_share"] = stats["assistant_greedy_hits"] / scored
    if stats.get("scored_tokens") and "topk_bytes" in stats:
        stats["topk_bytes_per_token"] = stats["topk_bytes"] / stats["scored_tokens"]
    if stats.get("seconds"):
        stats["tokens_per_second"] = stats.get("tokens", 0) / stats["seconds"]
    return stats


cli = shard_command("score", ScoreSettings, ScoreCommand)
