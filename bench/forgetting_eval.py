"""The forgetting bench's measurements of one model: the target task (greedy, exact final answer),
retention (multiple choice by log-likelihood) and drift (the log-probability of the base model's own
greedy answers). Every measure keeps its per-item results, which the paired intervals resample."""

from __future__ import annotations

import numpy as np
from forgetting_data import final_number


def prompt_ids(tokenizer, user: str) -> list[int]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def greedy_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch: int = 64) -> list[list[int]]:
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
    """log p(continuation token | prompt, earlier continuation tokens) for each (prompt, continuation).
    The LM head runs only where a continuation token is predicted, as ftprep's scorer does: on the
    retention items' short answers that is a tenth of the positions, and the head is most of the cost."""
    import torch

    from ftprep.stages.score.hf import head_logits

    decoder = model.get_decoder()
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    result: list[np.ndarray] = [np.zeros(0, np.float32)] * len(pairs)
    start = 0
    while start < len(order):
        width = len(pairs[order[start]][0]) + len(pairs[order[start]][1])
        chunk = order[start:start + max(1, batch_tokens // width)]
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        rows, positions = [], []
        for row, i in enumerate(chunk):
            prompt, continuation = pairs[i]
            ids[row, :len(prompt) + len(continuation)] = torch.as_tensor(prompt + continuation)
            rows += [row] * len(continuation)
            positions += range(len(prompt) - 1, len(prompt) + len(continuation) - 1)  # state i - 1 predicts token i
        with torch.inference_mode():
            # Right padding: causal attention keeps the pads out of every real position.
            states = decoder(input_ids=ids.to(model.device), use_cache=False).last_hidden_state[rows, positions]
            logits = head_logits(model, decoder, states).float()
            targets = ids[rows, [p + 1 for p in positions]].to(model.device)
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0].cpu().numpy()
        cursor = 0
        for i in chunk:
            result[i] = logprobs[cursor:cursor + len(pairs[i][1])]
            cursor += len(pairs[i][1])
        start += len(chunk)
    return result


def target_replies(model, tokenizer, rows: list[dict], max_new_tokens: int) -> list[str]:
    prompts = [prompt_ids(tokenizer, row["messages"][0]["content"]) for row in rows]
    return [tokenizer.decode(answer, skip_special_tokens=True)
            for answer in greedy_answers(model, tokenizer, prompts, max_new_tokens)]


def target_correct(replies: list[str], rows: list[dict]) -> list[int]:
    """Per row, 1 where the reply's final number is the answer."""
    return [int(final_number(reply) == row["answer"]) for reply, row in zip(replies, rows)]


def choice_logprobs(model, prompts: list[list[int]], choices: list[list[list[int]]], items_per_batch: int = 32) -> list[list[float]]:
    """log p(choice | prompt), summed over the choice's tokens, for every choice of every prompt.
    A prompt is run once and its cache shared by its choices: the prompts (the chat template's
    system line included) are ten times longer than the one-word choices, so this does a quarter
    of the work of scoring each (prompt, choice) pair alone."""
    import torch

    from ftprep.stages.score.hf import head_logits

    decoder = model.get_decoder()
    device = model.device
    totals: list[list[float]] = []
    for start in range(0, len(prompts), items_per_batch):
        batch_prompts, batch_choices = prompts[start:start + items_per_batch], choices[start:start + items_per_batch]
        width = max(map(len, batch_prompts))
        # Left-padded prompts, so that every prompt ends at the same place and its choices follow it.
        prompt_ids = torch.zeros((len(batch_prompts), width), dtype=torch.long)
        prompt_mask = torch.zeros_like(prompt_ids)
        for row, prompt in enumerate(batch_prompts):
            prompt_ids[row, width - len(prompt):] = torch.as_tensor(prompt)
            prompt_mask[row, width - len(prompt):] = 1
        flat_choices = [choice for item in batch_choices for choice in item]
        owner = torch.as_tensor([row for row, item in enumerate(batch_choices) for _ in item])
        choice_width = max(map(len, flat_choices))
        choice_ids = torch.zeros((len(flat_choices), choice_width), dtype=torch.long)
        choice_mask = torch.zeros_like(choice_ids)
        for row, choice in enumerate(flat_choices):
            choice_ids[row, :len(choice)] = torch.as_tensor(choice)
            choice_mask[row, :len(choice)] = 1
        prompt_positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
        with torch.inference_mode():
            prompt_out = decoder(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                                 position_ids=prompt_positions.to(device), use_cache=True)
            cache = prompt_out.past_key_values
            cache.reorder_cache(owner.to(device))  # one copy of a prompt's cache per choice
            lengths = prompt_mask.sum(1)[owner]
            choice_positions = lengths[:, None] + torch.arange(choice_width)[None]
            choice_states = decoder(input_ids=choice_ids.to(device),
                                    attention_mask=torch.cat([prompt_mask[owner], choice_mask], 1).to(device),
                                    position_ids=choice_positions.to(device), past_key_values=cache,
                                    use_cache=True).last_hidden_state
            # Token 0 of a choice is predicted by its prompt's last state, token j by the choice's state j - 1.
            states = torch.cat([prompt_out.last_hidden_state[owner, -1:], choice_states[:, :-1]], 1)
            real = choice_mask.bool()
            logits = head_logits(model, decoder, states[real.to(device)]).float()
            picked = torch.log_softmax(logits, -1).gather(1, choice_ids[real].to(device)[:, None])[:, 0].cpu()
        sums = torch.zeros(len(flat_choices)).index_add_(0, torch.arange(len(flat_choices)).repeat_interleave(real.sum(1)), picked)
        cursor = 0
        for item in batch_choices:
            totals.append(sums[cursor:cursor + len(item)].tolist())
            cursor += len(item)
    return totals


def retention_correct(model, tokenizer, items: list[dict]) -> list[int]:
    """Per item, 1 where the choice with the highest log-likelihood as the whole assistant answer (its
    tokens and the end-of-turn token) is the right one."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = [end] if isinstance(end, int) and end != tokenizer.unk_token_id else []
    prompts = [prompt_ids(tokenizer, f"{item['question']} Answer with the word only.") for item in items]
    choices = [[tokenizer(choice, add_special_tokens=False)["input_ids"] + end for choice in item["choices"]] for item in items]
    totals = choice_logprobs(model, prompts, choices)
    return [int(item["choices"][int(np.argmax(scores))] == item["answer"]) for scores, item in zip(totals, items)]


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
