"""transformers scoring backend.

Rows are sorted by length and packed into batches under a token budget (padding included),
right-padded so that causal attention alone keeps padding out of every real position. The
decoder runs over every token, but the LM head and the log-softmax run only on the positions
that are scored, in chunks of positions, so no float32 logits for a whole batch ever exist.

The logits of a chunk come from the model's own forward, handed the chunk's decoder states
as its decoder's output: whatever a family does after its LM head (Gemma 2's final
softcapping, Cohere's logit_scale, Granite's logits_scaling, a future family's twist) is
applied by the model itself, never re-implemented here.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import torch

from ftprep.stages import flat_values, row_offsets
from ftprep.stages.score import default_batch_tokens, positions_to_score, score_columns

# Elements of one chunk of float32 logits (positions x vocab) on CPU: ~32 MiB, cache-friendly.
CHUNK_ELEMENTS = 1 << 23
# On a GPU each chunk is an LM-head call that reads the head's weights again (262k x 2k x 2 bytes
# for Gemma 3): at least this many positions share one read, as vLLM's V2 runner does.
MIN_GPU_CHUNK_POSITIONS = 1024
# Bytes per (position x vocabulary entry) while a chunk is scored: the head's output in the
# model's dtype, its float32 copy, the exponentials, the rank comparison, and room for what a
# family does after its head (Gemma 2's softcapping makes a copy or two).
CHUNK_BYTES_PER_ENTRY = 16
# Share of the GPU memory free after loading that a chunk may take, beyond the minimum.
GPU_CHUNK_SHARE = 1 / 4


class HFScorer:
    entropy_kind = "full"

    def __init__(self, model, batch_tokens: int | None = None, top_k: int = 0, score_prompt: bool = False):
        """`model`: a transformers causal LM, loaded and placed on its device by the caller."""
        self.model = model
        self.device = model.device
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device.type)
        self.top_k = top_k
        self.score_prompt = score_prompt
        self.decoder = self.model.get_decoder()
        self.chunk_positions = chunk_positions_for(self.model, self.batch_tokens)
        check_logits_path(self.model, self.decoder)

    def close(self) -> None:
        """Nothing to stop: the model goes with the object."""

    def __call__(self, table: pa.Table, on_batch=None) -> pa.Table:
        """`on_batch(rows, tokens)` after each batch: its rows and their tokens (for progress)."""
        offsets = row_offsets(table)
        flat_ids = flat_values(table, "input_ids").astype(np.int64)
        positions = positions_to_score(offsets, flat_values(table, "assistant_mask"), self.score_prompt)
        row_of_position = np.searchsorted(offsets, positions, side="right") - 1

        count = len(positions)
        logprobs = np.empty(count, np.float32)
        entropy = np.empty(count, np.float32)
        rank = np.empty(count, np.int32)
        topk_ids = np.empty((count, self.top_k), np.int32) if self.top_k else None
        topk_logprobs = np.empty((count, self.top_k), np.float32) if self.top_k else None

        # A row's forward pass stops at its last scored token: the state at i - 1 predicts
        # token i, so the tokens from the last scored one on add nothing.
        rows_needed, last_index = np.unique(row_of_position[::-1], return_index=True)
        forward_ends = positions[len(positions) - 1 - last_index]
        forward_bounds = np.stack([offsets[:-1], offsets[:-1]], axis=1)
        forward_bounds[rows_needed, 1] = forward_ends
        for batch_rows in length_sorted_batches(forward_bounds, rows_needed, self.batch_tokens):
            slot_of_row = np.full(len(offsets) - 1, -1, dtype=np.int64)
            slot_of_row[batch_rows] = np.arange(len(batch_rows))
            selected = np.flatnonzero(slot_of_row[row_of_position] >= 0)
            slots = slot_of_row[row_of_position[selected]]
            local = positions[selected] - offsets[row_of_position[selected]]

            hidden = self._hidden_states(flat_ids, forward_bounds, batch_rows)
            # The state at i - 1 predicts token i.
            states = hidden[torch.from_numpy(slots).to(self.device), torch.from_numpy(local - 1).to(self.device)]
            targets = torch.from_numpy(flat_ids[positions[selected]]).to(self.device)
            chunks = [self._score_chunk(states[start : start + self.chunk_positions], targets[start : start + self.chunk_positions])
                      for start in range(0, len(selected), self.chunk_positions)]
            # Results stay on the device until the batch is done: one copy to the host per batch,
            # not a GPU synchronisation per chunk.
            batch_scores = [torch.cat(parts).cpu().numpy() for parts in zip(*chunks)]
            logprobs[selected], entropy[selected], rank[selected] = batch_scores[:3]
            if self.top_k:
                topk_ids[selected], topk_logprobs[selected] = batch_scores[3:]
            if on_batch is not None:
                on_batch(len(batch_rows), int((offsets[batch_rows + 1] - offsets[batch_rows]).sum()))

        columns = score_columns(offsets, positions, logprobs, entropy, rank, topk_ids, topk_logprobs)
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table

    @torch.inference_mode()
    def _hidden_states(self, flat_ids: np.ndarray, bounds: np.ndarray, batch_rows: np.ndarray) -> torch.Tensor:
        starts, ends = bounds[batch_rows, 0], bounds[batch_rows, 1]
        padded = np.zeros((len(batch_rows), int((ends - starts).max())), dtype=np.int64)
        for slot, (start, end) in enumerate(zip(starts, ends)):
            padded[slot, : end - start] = flat_ids[start:end]
        tokens = torch.from_numpy(padded).to(self.device)
        # No attention mask: with right padding, the causal mask already hides every pad
        # from every real position, and SDPA takes its fast causal path.
        return self.decoder(input_ids=tokens, use_cache=False).last_hidden_state

    @torch.inference_mode()
    def _score_chunk(self, states: torch.Tensor, targets: torch.Tensor):
        return scores_from_logits(head_logits(self.model, self.decoder, states).float(), targets, self.top_k)


def chunk_positions_for(model, batch_tokens: int) -> int:
    """Positions per LM-head chunk for `model` where it is: sized from the GPU's free memory on
    CUDA, from CHUNK_ELEMENTS on the CPU."""
    vocab = model.get_output_embeddings().weight.shape[0]
    if model.device.type != "cuda":
        return max(1, CHUNK_ELEMENTS // vocab)
    free_bytes, _ = torch.cuda.mem_get_info(model.device)
    return gpu_chunk_positions(vocab, free_bytes, batch_tokens)


def gpu_chunk_positions(vocab: int, free_bytes: int, batch_tokens: int) -> int:
    """At least MIN_GPU_CHUNK_POSITIONS where half the free memory holds their logits, up to what
    GPU_CHUNK_SHARE of it holds beyond that, and never more than a batch has tokens: at a 262k
    vocabulary with 60 GiB free, 3,840 positions (4 head calls for a 16k-token batch, not 512)."""
    entry_bytes = vocab * CHUNK_BYTES_PER_ENTRY
    fitting = int(free_bytes * GPU_CHUNK_SHARE) // entry_bytes
    if fitting < MIN_GPU_CHUNK_POSITIONS:
        fitting = min(MIN_GPU_CHUNK_POSITIONS, (free_bytes // 2) // entry_bytes)
    return max(1, min(batch_tokens, fitting))


def scores_from_logits(logits: torch.Tensor, targets: torch.Tensor, top_k: int = 0) -> list[torch.Tensor]:
    """Logprob, entropy and rank of each target (and the top-k ids and logprobs) from float32
    logits [positions, vocab], which it overwrites: few passes over the vocab-sized chunk, in
    place where possible, since on CPU these passes cost as much as the LM head matmul itself."""
    target_logits = logits.gather(1, targets[:, None])
    # Rank = how many tokens are at least as likely as the target, itself included: a tie counts
    # against the target (rank 1 = the one greedy choice). vLLM counts the same way.
    rank = (logits >= target_logits).sum(dim=-1)
    top = logits.amax(dim=-1, keepdim=True)
    shifted = logits.sub_(top)
    unnormalized = torch.exp(shifted)
    partition = unnormalized.sum(dim=-1)
    log_partition = partition.log()
    # H = log Z - E_p[shifted logit]; the expectation as one batched dot product.
    expected_shifted = torch.bmm(unnormalized.unsqueeze(1), shifted.unsqueeze(2)).view(-1) / partition
    logprobs = (target_logits - top).view(-1) - log_partition
    entropy = log_partition - expected_shifted
    out = [logprobs, entropy, rank.to(torch.int32)]
    if top_k:
        values, indices = torch.topk(shifted, top_k, dim=-1)
        out += [indices.to(torch.int32), values - log_partition[:, None]]
    return out


@contextmanager
def decoder_returning(decoder, states: torch.Tensor):
    """While inside, `decoder` returns `states` ([batch, positions, hidden]) as its output
    without running: the model's forward then does only what follows its decoder."""
    from transformers.modeling_outputs import BaseModelOutputWithPast

    decoder.forward = lambda *args, **kwargs: BaseModelOutputWithPast(last_hidden_state=states)
    try:
        yield
    finally:
        del decoder.forward  # back to the class's forward


@torch.inference_mode()
def head_logits(model, decoder, states: torch.Tensor) -> torch.Tensor:
    """Logits [positions, vocab] of decoder states [positions, hidden], as the model's own
    forward computes them from its decoder's output (LM head and all that follows it)."""
    placeholder_ids = torch.zeros((1, len(states)), dtype=torch.long, device=states.device)
    with decoder_returning(decoder, states[None]):
        return model(input_ids=placeholder_ids, use_cache=False).logits[0]


@torch.inference_mode()
def check_logits_path(model, decoder, length: int = 8) -> None:
    """The decoder-then-head path must give the logits of one plain forward pass: a model whose
    forward does more than decoder + its tail (none that transformers ships today) would
    otherwise be scored wrong without a word."""
    from ftprep.stages.errors import FtprepError

    vocab = model.get_output_embeddings().weight.shape[0]
    ids = (torch.arange(length, device=model.device)[None] * 7919 + 3) % vocab
    direct = model(input_ids=ids, use_cache=False).logits[0].float()
    states = decoder(input_ids=ids, use_cache=False).last_hidden_state[0]
    split = head_logits(model, decoder, states).float()
    tolerance = 1e-4 if direct.dtype == torch.float32 and model.dtype == torch.float32 else 1e-2
    if not torch.allclose(direct, split, rtol=tolerance, atol=tolerance * float(direct.abs().max().clamp(min=1))):
        raise FtprepError(f"{type(model).__name__}: its logits cannot be computed position by position from its "
                          "decoder's states; this family is not supported by the hf backend (try --backend vllm)")


def length_sorted_batches(bounds: np.ndarray, rows: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group rows, longest first, so that rows x longest row stays within the token budget.

    bounds[row] = (start, end) of the tokens the row feeds to the model.
    """
    all_lengths = bounds[:, 1] - bounds[:, 0]
    order = rows[np.argsort(-all_lengths[rows], kind="stable")]
    batches, current, longest = [], [], 0
    for row in order:
        length = int(all_lengths[row])
        longest_if_added = max(longest, length)
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(np.array(current))
            current, longest_if_added = [], length
        current.append(row)
        longest = longest_if_added
    if current:
        batches.append(np.array(current))
    return batches
