"""The forgetting bench's measurements of one model: the target task (greedy, exact final answer),
retention (multiple choice by log-likelihood) and drift (the log-probability of the base model's own
greedy answers). Every measure keeps its per-item results, which the paired intervals resample."""

from __future__ import annotations

import numpy as np
from forgetting_data import final_number


def prompt_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, the end-of-turn token included when reached), batched and left-padded."""
    import torch

    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
    # Longest first so that a batch pads little; the answers go back in the caller's order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        width = max(len(prompts[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, width - len(prompts[i]):] = torch.as_tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=pad)
        for row, i in enumerate(chunk):
            tokens = out[row, width:].tolist()
            cut = next((k + 1 for k, token in enumerate(tokens) if token in eos), len(tokens))
            answers[i] = tokens[:cut]
    return answers


def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], batch_tokens: int = 4096) -> list[np.ndarray]:
    """log p(continuation token | prompt, earlier continuation tokens) for each (prompt, continuation)."""
    import torch

    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    result: list[np.ndarray] = [np.zeros(0, np.float32)] * len(pairs)
    start = 0
    while start < len(order):
        width = len(pairs[order[start]][0]) + len(pairs[order[start]][1])
        size = max(1, batch_tokens // width)
        chunk = order[start:start + size]
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            seq = pairs[i][0] + pairs[i][1]
            ids[row, :len(seq)] = torch.as_tensor(seq)
            mask[row, :len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float().cpu()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None])[..., 0]
        for row, i in enumerate(chunk):
            prompt, continuation = pairs[i]
            result[i] = logprobs[row, len(prompt) - 1:len(prompt) - 1 + len(continuation)].numpy()
        start += size
    return result


def target_replies(model, tokenizer, rows: list[dict], max_new_tokens: int) -> list[str]:
    prompts = [prompt_ids(tokenizer, row["messages"][0]["content"]) for row in rows]
    return [tokenizer.decode(answer, skip_special_tokens=True)
            for answer in greedy_answers(model, tokenizer, prompts, max_new_tokens)]


def target_correct(replies: list[str], rows: list[dict]) -> list[int]:
    """Per row, 1 where the reply's final number is the answer."""
    return [int(final_number(reply) == row["answer"]) for reply, row in zip(replies, rows)]


def retention_correct(model, tokenizer, items: list[dict]) -> list[int]:
    """Per item, 1 where the choice with the highest log-likelihood as the whole assistant answer (its
    tokens and the end-of-turn token) is the right one."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
    pairs = []
    for item in items:
        prompt = prompt_ids(tokenizer, f"{item['question']} Answer with the word only.")
        pairs += [(prompt, tokenizer(choice, add_special_tokens=False)["input_ids"] + end) for choice in item["choices"]]
    totals = [float(logprobs.sum()) for logprobs in continuation_logprobs(model, pairs)]
    picked = [item["choices"][int(np.argmax(totals[4 * k:4 * k + 4]))] for k, item in enumerate(items)]
    return [int(pick == item["answer"]) for pick, item in zip(picked, items)]


def drift_logprob(model, references: list[tuple[list[int], list[int]]]) -> float:
    """Mean log-probability per token of the base model's greedy answers (over all their tokens)."""
    return float(np.concatenate(continuation_logprobs(model, references)).mean())


def evaluate(model, tokenizer, val: list[dict], test: list[dict], items: list[dict], references, answer_tokens: int) -> dict:
    """Every measure of one model: validation and test target accuracy, retention, drift, with the
    per-item results of test and retention and a few replies to read."""
    replies = target_replies(model, tokenizer, val + test, answer_tokens)  # one batched pass for both splits
    val_correct, test_correct = target_correct(replies[:len(val)], val), target_correct(replies[len(val):], test)
    retention = retention_correct(model, tokenizer, items)
    return {"val_target": float(np.mean(val_correct)) if val else None, "target": float(np.mean(test_correct)),
            "retention": float(np.mean(retention)), "drift": drift_logprob(model, references),
            "target_items": test_correct, "retention_items": retention,
            "examples": [{"reply": reply, "answer": row["answer"]} for reply, row in zip(replies[len(val):], test[:3])]}
