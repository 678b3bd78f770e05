"""transformers scoring backend.

Rows are sorted by length and packed into batches under a token budget (padding included),
right-padded so that causal attention alone keeps padding out of every real position. The
decoder runs over every token, but the LM head and the log-softmax run only on the positions
that are scored, in chunks of positions, so no float32 logits for a whole batch ever exist.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline.models import load_model
from stages.score import positions_to_score, score_columns

# Elements of one chunk of float32 logits (positions x vocab): ~32 MiB, cache-friendly enough
# on CPU and small next to a GPU's memory.
CHUNK_ELEMENTS = 1 << 23


class HFScorer:
    entropy_kind = "full"

    def __init__(self, model_dir: str, dtype: str = "float32", device: str = "cpu", batch_tokens: int = 8192,
                 top_k: int = 0, score_prompt: bool = False):
        self.model = load_model(model_dir, dtype, device)
        self.device = torch.device(device)
        self.batch_tokens = batch_tokens
        self.top_k = top_k
        self.score_prompt = score_prompt
        self.decoder = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.softcap = getattr(self.model.config, "final_logit_softcapping", None)
        self.chunk_positions = max(1, CHUNK_ELEMENTS // self.head.weight.shape[0])

    def __call__(self, table: pa.Table) -> pa.Table:
        input_ids = table.column("input_ids").combine_chunks()
        assistant_mask = table.column("assistant_mask").combine_chunks()
        offsets = input_ids.offsets.to_numpy().astype(np.int64)
        flat_ids = input_ids.values.to_numpy().astype(np.int64)
        positions = positions_to_score(input_ids, assistant_mask, self.score_prompt)
        row_of_position = np.searchsorted(offsets, positions, side="right") - 1

        count = len(positions)
        logprobs = np.empty(count, np.float32)
        entropy = np.empty(count, np.float32)
        rank = np.empty(count, np.int32)
        topk_ids = np.empty((count, self.top_k), np.int32) if self.top_k else None
        topk_logprobs = np.empty((count, self.top_k), np.float32) if self.top_k else None

        rows_needed = np.unique(row_of_position)
        for batch_rows in length_sorted_batches(offsets, rows_needed, self.batch_tokens):
            slot_of_row = np.full(len(offsets) - 1, -1, dtype=np.int64)
            slot_of_row[batch_rows] = np.arange(len(batch_rows))
            selected = np.flatnonzero(slot_of_row[row_of_position] >= 0)
            slots = slot_of_row[row_of_position[selected]]
            local = positions[selected] - offsets[row_of_position[selected]]

            hidden = self._hidden_states(flat_ids, offsets, batch_rows)
            # The state at i - 1 predicts token i.
            states = hidden[torch.from_numpy(slots).to(self.device), torch.from_numpy(local - 1).to(self.device)]
            targets = torch.from_numpy(flat_ids[positions[selected]]).to(self.device)
            for start in range(0, len(selected), self.chunk_positions):
                part = slice(start, start + self.chunk_positions)
                into = selected[part]
                scores = self._score_chunk(states[part], targets[part])
                logprobs[into], entropy[into], rank[into] = scores[:3]
                if self.top_k:
                    topk_ids[into], topk_logprobs[into] = scores[3:]

        columns = score_columns(offsets, positions - offsets[0], logprobs, entropy, rank, topk_ids, topk_logprobs)
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table

    @torch.inference_mode()
    def _hidden_states(self, flat_ids: np.ndarray, offsets: np.ndarray, batch_rows: np.ndarray) -> torch.Tensor:
        lengths = offsets[batch_rows + 1] - offsets[batch_rows]
        padded = np.zeros((len(batch_rows), int(lengths.max())), dtype=np.int64)
        for slot, row in enumerate(batch_rows):
            padded[slot, : lengths[slot]] = flat_ids[offsets[row] : offsets[row + 1]]
        tokens = torch.from_numpy(padded).to(self.device)
        # No attention mask: with right padding, the causal mask already hides every pad
        # from every real position, and SDPA takes its fast causal path.
        return self.decoder(input_ids=tokens, use_cache=False).last_hidden_state

    @torch.inference_mode()
    def _score_chunk(self, states: torch.Tensor, targets: torch.Tensor):
        logits = self.head(states).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        log_norm = torch.logsumexp(logits, dim=-1)
        target_logits = logits.gather(1, targets[:, None]).squeeze(1)
        rank = (logits > target_logits[:, None]).sum(dim=-1) + 1
        # H = log Z - sum_v p_v * logit_v, without a second vocab-sized log-softmax tensor.
        probs = torch.softmax(logits, dim=-1)
        entropy = log_norm - (probs * logits).sum(dim=-1)
        out = [(target_logits - log_norm).cpu().numpy(), entropy.cpu().numpy(), rank.to(torch.int32).cpu().numpy()]
        if self.top_k:
            values, indices = torch.topk(logits, self.top_k, dim=-1)
            out += [indices.to(torch.int32).cpu().numpy(), (values - log_norm[:, None]).cpu().numpy()]
        return out


def length_sorted_batches(offsets: np.ndarray, rows: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Group rows, longest first, so that rows x longest row stays within the token budget."""
    lengths = offsets[rows + 1] - offsets[rows]
    order = rows[np.argsort(-lengths, kind="stable")]
    batches, current, longest = [], [], 0
    for row in order:
        length = int(offsets[row + 1] - offsets[row])
        longest_if_added = max(longest, length)
        if current and longest_if_added * (len(current) + 1) > batch_tokens:
            batches.append(np.array(current))
            current, longest_if_added = [], length
        current.append(row)
        longest = longest_if_added
    if current:
        batches.append(np.array(current))
    return batches
