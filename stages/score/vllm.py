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
# Bounds of the engine step: below 512 tokens a GPU idles; above 16384 it gains nothing.
BATCHED_TOKENS_RANGE = (512, 16384)


def default_engine_settings(device: str) -> dict:
    """On CPU, vLLM's memory share is of RAM: its GPU default (0.92) fails on a small machine.
    The logits of a batch (batched tokens x vocab x ~6 bytes) are outside vLLM's memory
    profile, so leave headroom for them."""
    if device == "cpu":
        return {"gpu_memory_utilization": 0.3, "max_num_batched_tokens": 2048}
    return {"gpu_memory_utilization": 0.85, "max_num_batched_tokens": 8192}


def batched_tokens_for_memory(vocab_size: int, free_bytes: int, total_bytes: int, utilization: float) -> int:
    """Tokens per engine step whose prompt-logprob logits (tokens x vocab x ~6 bytes, which
    vLLM's memory profile does not count) fit in half of what its share leaves free on the GPU.

    A step can hold prompt tokens of several rows, and every one of them gets logits: with a
    262k vocabulary, 8192 tokens take 12.9 GB, more than the 15 % left beside vLLM on a 80 GB GPU
    once the CUDA context and other processes have taken theirs."""
    left_free = free_bytes - utilization * total_bytes
    fitting = int(left_free / 2 / (vocab_size * PROMPT_LOGITS_BYTES))
    low, high = BATCHED_TOKENS_RANGE
    if fitting < low:
        from ftprep.stages.errors import FtprepError

        raise FtprepError(f"too little GPU memory left beside vLLM for the logits of {low} tokens x {vocab_size} "
                          f"vocabulary ({max(left_free, 0) / 2**30:.1f} GiB free): lower --gpu-memory-utilization")
    return min(high, fitting) // 256 * 256


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
                     max_num_batched_tokens: int | None, seed: int, max_model_len: int | None = None,
                     tensor_parallel_size: int = 1) -> dict:
    """What `vllm.LLM` is built with for scoring (and regen's sampling) on `device`.

    `max_model_len`: the longest row the run keeps (--max-length, else the model's context):
    vLLM sizes its KV cache and its checks from it, and would otherwise reserve a 128k-context
    model's whole context. `max_num_batched_tokens`: as asked, or as `batched_tokens_for_memory`
    sized it."""
    settings = default_engine_settings(device)
    arguments = dict(
        model=model_dir,
        dtype=dtype,
        skip_tokenizer_init=True,
        enable_prefix_caching=False,  # prompt logprobs bypass the cache anyway
        gpu_memory_utilization=gpu_memory_utilization or settings["gpu_memory_utilization"],
        max_num_batched_tokens=max_num_batched_tokens or settings["max_num_batched_tokens"],
        max_logprobs=returned_k(top_k),
        seed=seed,  # scoring draws nothing; regen's sampling does
    )
    if max_model_len:
        arguments["max_model_len"] = int(max_model_len)
    if tensor_parallel_size > 1:
        # The engine's own worker processes on this machine's GPUs (a Ray worker's GPUs on Ray):
        # inside a Ray actor vLLM would otherwise try to place its workers through Ray.
        arguments.update(tensor_parallel_size=tensor_parallel_size, distributed_executor_backend="mp")
    return arguments


def returned_k(top_k: int) -> int:
    """Logprobs vLLM returns per position: the top-k asked for, and enough for the entropy."""
    return max(top_k, ENTROPY_TOP_K)


# Tokens of one engine call: enough for the engine to keep its batches full (many steps of
# max_num_batched_tokens each), small enough that progress moves within a shard.
CALL_TOKENS = 1 << 16


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
        engine in calls of about CALL_TOKENS tokens."""
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
        for call in call_ranges(lengths, CALL_TOKENS):
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
