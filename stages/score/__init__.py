"""Score stage: per-token log-probability, rank and entropy of the ground truth under a model.

Backends share `score_columns`, which turns the scored positions of a batch into the
columns of the scored dataset (NaN and rank 0 where nothing was scored).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ftprep.stages import flat_values, nested_list_array

TOPK_IDS_TYPE = pa.int32()
# float16 rounds a logprob by at most 5e-4 of its size (3e-8 nats near 0, under 0.02 above -64),
# far below what a KL target needs, in half the bytes of float32.
TOPK_LOGPROBS_TYPE = pa.float16()


def default_batch_tokens(device: str) -> int:
    """Measured on a 2-core CPU: ~1k-token batches keep fp32 matmuls in cache and padding low
    (bench/score_cpu.py); a GPU needs far larger batches to fill."""
    return 1024 if device == "cpu" else 16384


def positions_to_score(offsets: np.ndarray, assistant_mask: np.ndarray, score_prompt: bool) -> np.ndarray:
    """Flat indices of the tokens to score (offsets start at 0); never a row's first token."""
    wanted = np.ones(offsets[-1], dtype=bool) if score_prompt else assistant_mask.astype(bool)
    wanted[offsets[:-1][np.diff(offsets) > 0]] = False
    return np.flatnonzero(wanted)


def score_columns(offsets: np.ndarray, positions: np.ndarray, logprobs, entropy, rank, topk_ids=None, topk_logprobs=None) -> dict:
    """Full-length per-token columns from values at `positions` (flat indices, offsets from 0)."""
    total = int(offsets[-1])
    list_offsets = pa.array(offsets.astype(np.int32))

    def spread(values, fill, dtype):
        full = np.full(total, fill, dtype=dtype)
        full[positions] = values
        return pa.ListArray.from_arrays(list_offsets, pa.array(full))

    columns = {
        "logprobs": spread(logprobs, np.nan, np.float32),
        "entropy": spread(entropy, np.nan, np.float32),
        "rank": spread(rank, 0, np.int32),
    }
    if topk_ids is not None:
        entry_of_token = np.full(total, -1, dtype=np.int64)
        entry_of_token[positions] = np.arange(len(positions))
        # Computed in float32, stored compactly: K x (4 + 2) bytes per scored token.
        columns["topk_ids"] = nested_list_array(offsets, entry_of_token, topk_ids, TOPK_IDS_TYPE)
        columns["topk_logprobs"] = nested_list_array(offsets, entry_of_token, topk_logprobs, TOPK_LOGPROBS_TYPE)
    return columns


def scored_schema(top_k: int = 0) -> pa.Schema:
    from ftprep.stages.tokenization import MESSAGES_TYPE

    fields = [
        ("id", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("input_ids", pa.list_(pa.int32())),
        ("assistant_mask", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float32())),
        ("entropy", pa.list_(pa.float32())),
        ("rank", pa.list_(pa.int32())),
    ]
    if top_k:
        fields += [("topk_ids", pa.list_(pa.list_(TOPK_IDS_TYPE))), ("topk_logprobs", pa.list_(pa.list_(TOPK_LOGPROBS_TYPE)))]
    return pa.schema(fields)


class ScoreStage:
    """Tokenized rows in; the same rows with `logprobs`, `entropy`, `rank` (and the top-k) out.
    `scorer` is a backend (hf.HFScorer, vllm.VLLMScorer) around a model its caller loaded.
    `on_batch(rows, tokens)`, when the caller sets it, hears of each batch the backend finishes
    (the hf backend per batch, vLLM per engine call)."""

    def __init__(self, scorer):
        self.scorer = scorer
        self.on_batch = None

    def __call__(self, table: pa.Table, rejects=None) -> tuple[pa.Table, dict]:
        scored = self.scorer(table, on_batch=self.on_batch) if self.on_batch else self.scorer(table)
        return scored, score_stats(scored)

    def close(self) -> None:
        self.scorer.close()


def score_stats(table: pa.Table) -> dict:
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
