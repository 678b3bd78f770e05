"""vLLM scoring backend: prompt logprobs of our own token ids.

We hand vLLM the token ids that `tokenize` produced (never text, so no second BOS and no
re-tokenization) and ask for prompt logprobs. For every position vLLM returns the
ground-truth token's logprob and rank followed by the top-k, which gives the same columns as
the hf backend except entropy: vLLM does not return it, so it is computed over the top-k
(recorded as `entropy_kind: topk-K` in ftprep.json).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ftprep.stages import flat_values, row_offsets
from ftprep.stages.score import positions_to_score, score_columns

ENTROPY_TOP_K = 20


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# Bytes per (batched token x vocabulary entry) of the prompt-logprob pass: float32 logits, then
# their float32 log-softmax while the bf16 logits still exist (vLLM's sampler), ~6 bytes.
PROMPT_LOGITS_BYTES = 6
# Bounds of the engine step: below 512 tokens a GPU idles; above 16384 it gains nothing (16384 is
# also vLLM's own default on an H100/H200 for the LLM class, engine/arg_utils.py).
BATCHED_TOKENS_RANGE = (512, 16384)
# Positions whose prompt logits the V2 model runner computes at a time, whatever the step holds
# (CHUNK_SIZE in vllm/v1/worker/gpu/sample/prompt_logprob.py, 0.32).
V2_PROMPT_LOGITS_CHUNK = 1024
# The first vLLM whose CUDA default is the V2 model runner (config/vllm.py, use_v2_model_runner).
V2_RUNNER_DEFAULT_SINCE = (0, 32)
# The one output token vLLM keeps room for: it refuses a prompt as long as max_model_len, even one
# that asks for prompt logprobs and a single token (v1/engine/input_processor.py).
OUTPUT_ROOM = 1
# vLLM's smallest default max_num_seqs (256, engine/arg_utils.py): a step of fewer batched tokens
# than this gets max_num_seqs set to its size, as vLLM must have max_num_seqs <= the batched tokens.
SMALLEST_DEFAULT_SEQS = 256


def default_engine_settings(device: str) -> dict:
    """On CPU, vLLM's memory share is of RAM: its GPU default (0.92) fails on a small machine.
    The logits of a batch (batched tokens x vocab x ~6 bytes) are outside vLLM's memory
    profile, so leave headroom for them."""
    if device == "cpu":
        return {"gpu_memory_utilization": 0.3, "max_num_batched_tokens": 2048}
    return {"gpu_memory_utilization": 0.85, "max_num_batched_tokens": 8192}


def uses_v2_model_runner(environ, vllm_version: str, has_triton: bool) -> bool:
    """Whether vLLM scores with its V2 model runner on CUDA, as vLLM decides it (config/vllm.py):
    VLLM_USE_V2_MODEL_RUNNER where set, else V2 wherever Triton is, from 0.32 on (ftprep asks for
    none of the features V2 lacks: speculative decoding, external_launcher pipelines, DBO)."""
    chosen = environ.get("VLLM_USE_V2_MODEL_RUNNER")
    if chosen is not None:
        return bool(int(chosen))  # vLLM's own reading of it (envs.maybe_convert_bool)
    release = tuple(int(part) for part in vllm_version.split(".")[:2] if part.isdigit())
    return has_triton and release >= V2_RUNNER_DEFAULT_SINCE


def batched_tokens_for_memory(vocab_size: int, free_bytes: int, total_bytes: int, utilization: float,
                              v2_runner: bool = True) -> int:
    """Tokens per engine step such that the prompt-logprob logits (which vLLM's memory profile does
    not count) fit in half of what its share leaves free on the GPU.

    The V2 model runner computes them V2_PROMPT_LOGITS_CHUNK positions at a time, whatever the step
    holds: the step can be as large as the range allows. The V1 runner (VLLM_USE_V2_MODEL_RUNNER=0)
    computes a request's logits for all its tokens in the step at once, in float32 (~6 bytes per
    entry, v1/worker/gpu_model_runner.py): with a 262k vocabulary 8192 tokens take 12.9 GB, more
    than the 15 % left beside vLLM on a 80 GB GPU, so the step is sized down to what fits."""
    left_free = free_bytes - utilization * total_bytes
    entry_bytes = vocab_size * PROMPT_LOGITS_BYTES
    low, high = BATCHED_TOKENS_RANGE
    fitting = int(left_free / 2 / entry_bytes)
    needed = V2_PROMPT_LOGITS_CHUNK if v2_runner else low
    if fitting < needed:
        from ftprep.stages.errors import FtprepError

        raise FtprepError(f"too little GPU memory left beside vLLM for the logits of {needed} tokens x {vocab_size} "
                          f"vocabulary ({max(left_free, 0) / 2**30:.1f} GiB free): lower --gpu-memory-utilization")
    return high if v2_runner else min(high, fitting) // 256 * 256


def returned_entries(prompt_logprobs, targets: np.ndarray, width: int):
    """[positions, 1 + k] token ids and logprobs (the ground truth first, then the top-k by
    rank) and the ground truth's rank, for positions 1.. of one row."""
    count = len(targets)
    if hasattr(prompt_logprobs, "start_indices"):  # FlatLogprobs: already [gt, top-1..top-k] per position
        return (np.asarray(prompt_logprobs.token_ids, np.int64).reshape(count, width),
                np.asarray(prompt_logprobs.logprobs, np.float32).reshape(count, width),
                np.asarray(prompt_logprobs.ranks, np.int64).reshape(count, width)[:, 0])
    # Older vLLM: one dict {token id: Logprob} per position, the ground truth merged into the top-k.
    ids, values, ranks = np.empty((count, width), np.int64), np.empty((count, width), np.float32), np.empty(count, np.int64)
    for index, (target, entries) in enumerate(zip(targets, prompt_logprobs[1:])):
        by_rank = sorted(entries.items(), key=lambda item: item[1].rank)[: width - 1]
        ids[index] = [target] + [token for token, _ in by_rank]
        values[index] = [entries[target].logprob] + [entry.logprob for _, entry in by_rank]
        ranks[index] = entries[target].rank
    return ids, values, ranks


def engine_arguments(model_dir: str, dtype: str, device: str, top_k: int, gpu_memory_utilization: float | None,
                     max_num_batched_tokens: int | None, seed: int, longest_row: int | None = None,
                     tensor_parallel_size: int = 1, prefix_caching: bool = False) -> dict:
    """What `vllm.LLM` is built with for scoring (and regen's sampling) on `device`.

    `longest_row`: the longest row the run gives the engine (--max-length, else the model's
    context less OUTPUT_ROOM): vLLM sizes its KV cache and its checks from max_model_len, and would
    otherwise reserve a 128k-context model's whole context; max_model_len is one more, as vLLM
    refuses a row as long as it. `max_num_batched_tokens`: as asked, or as
    `batched_tokens_for_memory` sized it. `prefix_caching`: for regen, whose n candidates share a
    prompt; scoring requests never read the cache (prompt logprobs skip it, sampling_params.py)."""
    settings = default_engine_settings(device)
    batched_tokens = max_num_batched_tokens or settings["max_num_batched_tokens"]
    arguments = dict(
        model=model_dir,
        dtype=dtype,
        skip_tokenizer_init=True,
        enable_prefix_caching=prefix_caching,
        gpu_memory_utilization=gpu_memory_utilization or settings["gpu_memory_utilization"],
        max_num_batched_tokens=batched_tokens,
        max_logprobs=returned_k(top_k),
        seed=seed,  # scoring draws nothing; regen's sampling does
    )
    if batched_tokens < SMALLEST_DEFAULT_SEQS:
        # vLLM 0.32 lowers its default itself (arg_utils.py); older ones raise (config/scheduler.py).
        arguments["max_num_seqs"] = batched_tokens
    if longest_row:
        arguments["max_model_len"] = int(longest_row) + OUTPUT_ROOM
    if tensor_parallel_size > 1:
        # The engine's own worker processes on this machine's GPUs (a Ray worker's GPUs on Ray):
        # inside a Ray actor vLLM would otherwise try to place its workers through Ray.
        arguments.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
    return arguments


def longest_row_in_context(context: int | None) -> int | None:
    """The longest row vLLM scores in a model of `context` positions: one is kept for the output token."""
    return context - OUTPUT_ROOM if context else None


def returned_k(top_k: int) -> int:
    """Logprobs vLLM returns per position: the top-k asked for, and enough for the entropy."""
    return max(top_k, ENTROPY_TOP_K)


# Host bytes per returned (position, entry) while an engine call's results are held: vLLM's
# FlatLogprobs keeps Python lists of token ids, logprobs, ranks and decoded tokens (logprobs.py),
# ~120 bytes per entry measured with tracemalloc, and ftprep's arrays of them take ~20 more.
HOST_BYTES_PER_ENTRY = 150
# Share of the host memory available when a shard starts that one call's results may take (a
# node can run several workers).
CALL_MEMORY_SHARE = 1 / 8
# Fewest tokens of one call, however little memory is free: many steps of max_num_batched_tokens.
MIN_CALL_TOKENS = 1 << 16


def call_tokens(returned_k: int, available_bytes: int) -> int:
    """Tokens of one engine call. Each call ends in a barrier where the GPU idles (the last few
    requests drain, then the host converts the results), so a shard is one call wherever its
    results fit in CALL_MEMORY_SHARE of the available memory (5.4M tokens on a host with 128 GiB
    free at k = 20); else as many tokens as do, and never fewer than MIN_CALL_TOKENS."""
    return max(MIN_CALL_TOKENS, int(available_bytes * CALL_MEMORY_SHARE / ((returned_k + 1) * HOST_BYTES_PER_ENTRY)))


def available_memory() -> int:
    import psutil  # a dependency of vLLM

    return psutil.virtual_memory().available


def call_ranges(lengths: np.ndarray, budget: int) -> list[range]:
    """Consecutive rows cut into ranges of about `budget` tokens each (a longer row alone)."""
    if not len(lengths):
        return []
    tokens_before = np.cumsum(lengths) - lengths
    starts = np.flatnonzero(np.diff(tokens_before // budget, prepend=-1))
    return [range(start, stop) for start, stop in zip(starts, [*starts[1:], len(lengths)])]


class VLLMScorer:
    def __init__(self, llm, top_k: int = 0, score_prompt: bool = False):
        """`llm`: a `vllm.LLM` its caller started with `engine_arguments` (one engine per run:
        start-up costs far more than a shard)."""
        self.llm = llm
        self.top_k = top_k
        self.score_prompt = score_prompt
        self.returned_k = returned_k(top_k)
        self.entropy_kind = f"topk-{ENTROPY_TOP_K}"

    def close(self) -> None:
        """Stop the engine's processes now: left to interpreter exit, their teardown can abort
        the process ("terminate called without an active exception") after the work is done."""
        engine_core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()

    def __call__(self, table: pa.Table, on_batch=None) -> pa.Table:
        """`on_batch(rows, tokens)` after each engine call (for progress): a shard goes to the
        engine in one call where memory allows, else in calls of `call_tokens` tokens."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        offsets = row_offsets(table)
        flat_ids = flat_values(table, "input_ids").astype(np.int64)
        positions = positions_to_score(offsets, flat_values(table, "assistant_mask"), self.score_prompt)
        rows = np.unique(np.searchsorted(offsets, positions, side="right") - 1)
        # Flat logprobs (a few arrays per row, not a dict per token) where this vLLM has them.
        flat = {"flat_logprobs": True} if "flat_logprobs" in getattr(SamplingParams, "__struct_fields__", ()) else {}
        params = SamplingParams(max_tokens=1, prompt_logprobs=self.returned_k, detokenize=False, **flat)
        prompts = [TokensPrompt(prompt_token_ids=flat_ids[offsets[row] : offsets[row + 1]].tolist()) for row in rows]
        lengths = offsets[rows + 1] - offsets[rows]
        outputs = []
        for call in call_ranges(lengths, call_tokens(self.returned_k, available_memory())):
            outputs += self.llm.generate(prompts[call.start : call.stop], params, use_tqdm=False)
            if on_batch is not None:
                on_batch(len(call), int(lengths[call.start : call.stop].sum()))

        # Every position but a row's first, as flat indices, with its (1 + k) returned entries.
        width = self.returned_k + 1
        every = np.concatenate([np.arange(offsets[row] + 1, offsets[row + 1]) for row in rows]) if len(rows) else np.zeros(0, np.int64)
        token_ids = np.empty((len(every), width), np.int64)
        logprobs = np.empty((len(every), width), np.float32)
        ranks = np.empty(len(every), np.int32)
        cursor = 0
        for row, output in zip(rows, outputs):
            count = offsets[row + 1] - offsets[row] - 1  # position 0 has no prediction
            ids, values, row_ranks = returned_entries(output.prompt_logprobs, flat_ids[offsets[row] + 1 : offsets[row + 1]], width)
            token_ids[cursor : cursor + count] = ids
            logprobs[cursor : cursor + count] = values
            ranks[cursor : cursor + count] = row_ranks
            cursor += count

        pick = np.searchsorted(every, positions)
        top_logprobs = logprobs[pick, 1 : ENTROPY_TOP_K + 1].astype(np.float64)
        entropy = -(np.exp(top_logprobs) * top_logprobs).sum(axis=1)
        topk = (token_ids[pick, 1 : self.top_k + 1].astype(np.int32), logprobs[pick, 1 : self.top_k + 1]) if self.top_k else (None, None)
        columns = score_columns(offsets, positions, logprobs[pick, 0], entropy.astype(np.float32), ranks[pick], *topk)
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table
