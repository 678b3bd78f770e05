"""Regeneration stage: rewrite assistant turns with the target model, keep the best rewrite.

For each turn to rewrite: sample n candidates, reject those that break a rule (checks.py),
score the ground truth and the candidates that pass with the score stage, and keep the
accepted candidate with the lowest perplexity, else the ground truth. By default a candidate
is accepted only if it is likelier than the ground truth: with a small model a rewrite
guided by the reference is often less likely in the original context than the reference
itself, and training on it would add the high-perplexity tokens regen is meant to remove.
Nothing is dropped.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ftprep.stages import flat_values, row_offsets
from ftprep.stages.errors import RowError
from ftprep.stages.regen.checks import compile_pattern, rejection_reason
from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE, check_template, generation_messages, scaffolding_lines, turn_tasks, with_response
from ftprep.stages.tokenization import MESSAGES_TYPE, ChatTokenizer, template_messages, tokenized_table

TURN_TYPE = pa.list_(pa.struct([("index", pa.int32()), ("source", pa.string()), ("ground_truth", pa.string())]))


def regen_schema() -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("messages", MESSAGES_TYPE),
        ("source", pa.string()),  # generated | ground_truth | mixed (some turns of several)
        ("candidates_tried", pa.int32()),
        ("candidates_accepted", pa.int32()),
        ("kept_perplexity", pa.float32()),
        ("ground_truth_perplexity", pa.float32()),
        ("rewritten_turns", TURN_TYPE),
    ])


@dataclass(frozen=True)
class RegenStageSettings:
    mode: str = "rephrase"
    template: str = DEFAULT_TEMPLATE
    train_on: str = "all"
    length_ratio: float = 3.0
    verify: str = "none"
    pattern: str | None = None
    seed: int = 0
    max_new_tokens: int = 512
    beat_ground_truth: bool = True  # accept only rewrites with a lower perplexity than the ground truth


def task_seed(seed: int, row_id: str, turn: int) -> int:
    """A seed per turn from the row's id, so a row samples the same wherever it lands."""
    return zlib.crc32(f"{seed}:{row_id}:{turn}".encode())


def assistant_logprob_sums(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sum of the scored assistant tokens' logprobs and their count."""
    offsets = row_offsets(table)
    logprobs = flat_values(table, "logprobs").astype(np.float64)
    counted = flat_values(table, "assistant_mask").astype(bool) & ~np.isnan(logprobs)
    row_of_token = np.repeat(np.arange(table.num_rows), np.diff(offsets))
    sums = np.bincount(row_of_token[counted], weights=logprobs[counted], minlength=table.num_rows)
    counts = np.bincount(row_of_token[counted], minlength=table.num_rows)
    return sums, counts


def perplexity_of(logprob_sum: float, count: int) -> float:
    return float(np.exp(-logprob_sum / count)) if count else float("nan")


def rows_done_reporter(row_of_prompt: list[int], on_batch):
    """A generator's per-batch callback that tells `on_batch(rows, generated tokens)` how many
    rows have all their turns generated now (a row's turns may fall in different batches)."""
    remaining = Counter(row_of_prompt)

    def batch_done(prompt_indices, candidates) -> None:
        finished = 0
        for index in prompt_indices:
            row = row_of_prompt[index]
            remaining[row] -= 1
            finished += remaining[row] == 0
        on_batch(finished, sum(candidate.tokens for found in candidates for candidate in found))

    return batch_done


class RegenStage:
    def __init__(self, settings: RegenStageSettings, tokenizer, generator, scorer, context_length: int | None):
        """`generator` samples candidates and `scorer` (a score backend) scores them, both around
        the model their caller loaded."""
        self.settings = settings
        self.tokenizer = tokenizer
        self.generator = generator
        self.scorer = scorer
        self.context_length = context_length
        self.template = check_template(settings.template) if settings.mode == "rephrase" else settings.template
        self.scaffolding = scaffolding_lines(self.template) if settings.mode == "rephrase" else []
        self.pattern = compile_pattern(settings.pattern, settings.verify)
        # Responses are scored as the last turn of their context: the mask covers just them.
        self.chat = ChatTokenizer(tokenizer, "last", context_length, "drop")
        self.on_batch = None  # on_batch(rows, generated tokens), set by the caller for progress

    def __call__(self, table: pa.Table, rejects=None) -> tuple[pa.Table, dict]:
        """Normalized rows (`id`, `messages`) in; every row out, rewritten where a candidate won."""
        ids, conversations = table.column("id").to_pylist(), table.column("messages").to_pylist()
        stats = Counter()
        tasks = turn_tasks(conversations, self.settings.train_on)
        prompts = self._prompt_ids(tasks)
        fits = [self.context_length is None or len(p) + self.settings.max_new_tokens <= self.context_length for p in prompts]
        stats["turns"] = len(tasks)
        stats["turns_prompt_too_long"] = fits.count(False)
        runnable = [index for index, fit in enumerate(fits) if fit]
        progress = {"on_batch": rows_done_reporter([tasks[i].row for i in runnable], self.on_batch)} if self.on_batch else {}
        samples = self.generator([prompts[i] for i in runnable],
                                 [task_seed(self.settings.seed, ids[tasks[i].row], tasks[i].turn) for i in runnable], **progress)
        candidates = {index: found for index, found in zip(runnable, samples)}

        # What gets scored: each turn's ground truth, then its accepted candidates.
        scored_texts: list[tuple[int, str | None]] = []  # (task, candidate text or None for ground truth)
        rejections = Counter()
        for index, task in enumerate(tasks):
            scored_texts.append((index, None))
            for candidate in candidates.get(index, []):
                stats["generated_tokens"] += candidate.tokens
                reason = rejection_reason(candidate.text, candidate.finished, task.reference,
                                          length_ratio=self.settings.length_ratio, scaffolding=self.scaffolding,
                                          verify=self.settings.verify, pattern=self.pattern)
                if reason:
                    rejections[reason] += 1
                else:
                    scored_texts.append((index, candidate.text))
        perplexities, sums, counts, failed = self._score(tasks, scored_texts)

        # Per turn: the accepted candidate with the lowest perplexity, else the ground truth.
        best: dict[int, int] = {}  # task -> position in scored_texts of what is kept
        ground_truth: dict[int, int] = {}
        accepted = set()
        for position, (index, text) in enumerate(scored_texts):
            if text is None:
                ground_truth[index] = best[index] = position
                continue
            if position in failed:
                rejections["tokenize"] += 1
                continue
            truth_perplexity = perplexities[ground_truth[index]]
            # A rewrite the model finds less likely than the ground truth defeats the purpose.
            if self.settings.beat_ground_truth and not perplexities[position] < truth_perplexity and not np.isnan(truth_perplexity):
                rejections["not_likelier"] += 1
                continue
            accepted.add(position)
            current = best[index]
            if scored_texts[current][1] is None or perplexities[position] < perplexities[current]:
                best[index] = position
        return self._table(ids, conversations, tasks, candidates, scored_texts, accepted, best, ground_truth, sums,
                           counts, perplexities, stats, rejections)

    def close(self) -> None:
        self.scorer.close()

    def _prompt_ids(self, tasks) -> list[list[int]]:
        if not tasks:
            return []
        texts = [self.tokenizer.apply_chat_template(template_messages(generation_messages(task, self.settings.mode, self.template)),
                                                    tokenize=False, add_generation_prompt=True) for task in tasks]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _score(self, tasks, scored_texts):
        conversations = [with_response(tasks[index], tasks[index].reference if text is None else text)
                         for index, text in scored_texts]
        tokenized = self.chat(conversations)
        failed = {position for position, row in enumerate(tokenized) if isinstance(row, RowError)}
        kept = [position for position in range(len(tokenized)) if position not in failed]
        sums = np.zeros(len(scored_texts))
        counts = np.zeros(len(scored_texts), dtype=np.int64)
        if kept:
            table = tokenized_table([str(p) for p in kept], [conversations[p] for p in kept], [tokenized[p] for p in kept])
            sums[kept], counts[kept] = assistant_logprob_sums(self.scorer(table))
        with np.errstate(divide="ignore", invalid="ignore"):
            perplexities = np.where(counts > 0, np.exp(-sums / np.maximum(counts, 1)), np.nan)
        return perplexities, sums, counts, failed

    def _table(self, ids, conversations, tasks, candidates, scored_texts, accepted_positions, best, ground_truth, sums,
               counts, perplexities, stats, rejections):
        rewritten = [list(messages) for messages in conversations]
        per_row = [{"sources": [], "tried": 0, "accepted": 0, "kept": [0.0, 0], "truth": [0.0, 0], "turns": []}
                   for _ in conversations]
        for index, task in enumerate(tasks):
            kept_position, truth_position = best[index], ground_truth[index]
            kept_text = scored_texts[kept_position][1]
            source = "ground_truth" if kept_text is None else "generated"
            tried = len(candidates.get(index, []))
            accepted = sum(1 for position in accepted_positions if scored_texts[position][0] == index)
            row = per_row[task.row]
            row["sources"].append(source)
            row["tried"] += tried
            row["accepted"] += accepted
            row["kept"][0] += sums[kept_position]
            row["kept"][1] += counts[kept_position]
            row["truth"][0] += sums[truth_position]
            row["truth"][1] += counts[truth_position]
            row["turns"].append({"index": task.turn, "source": source, "ground_truth": task.reference})
            if kept_text is not None:
                rewritten[task.row][task.turn] = {"role": "assistant", "content": kept_text}
            stats[f"turns_{source}"] += 1
            stats["candidates_tried"] += tried
            stats["candidates_accepted"] += accepted
            if counts[kept_position] and counts[truth_position]:
                stats["perplexity_turns"] += 1
                stats["kept_perplexity_sum"] += float(perplexities[kept_position])
                stats["ground_truth_perplexity_sum"] += float(perplexities[truth_position])
        sources = [set(row["sources"]) for row in per_row]
        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "messages": pa.array(rewritten, MESSAGES_TYPE),
            "source": pa.array([next(iter(s)) if len(s) == 1 else ("mixed" if s else "ground_truth") for s in sources]),
            "candidates_tried": pa.array([row["tried"] for row in per_row], pa.int32()),
            "candidates_accepted": pa.array([row["accepted"] for row in per_row], pa.int32()),
            "kept_perplexity": pa.array([perplexity_of(*row["kept"]) for row in per_row], pa.float32()),
            "ground_truth_perplexity": pa.array([perplexity_of(*row["truth"]) for row in per_row], pa.float32()),
            "rewritten_turns": pa.array([row["turns"] for row in per_row], TURN_TYPE),
        }, schema=regen_schema())
        stats = dict(stats)
        stats["candidate_rejections"] = dict(+rejections)
        return table, stats
