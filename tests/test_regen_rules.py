"""Regen's rules without sampling: checks, verifiers, prompts, and the choice among
candidates (a fixed generator stands in for sampling; scoring is the real hf scorer)."""

import re

import numpy as np
import pytest
from conftest import hf_scorer

from ftprep.stages.errors import FtprepError
from ftprep.stages.regen import RegenStage, RegenStageSettings, task_seed
from ftprep.stages.regen.checks import compile_pattern, final_number, rejection_reason, verify_answer
from ftprep.stages.regen.generate import Candidate, prompt_batches, split_at_stop
from ftprep.stages.regen.prompts import DEFAULT_TEMPLATE, check_template, generation_messages, scaffolding_lines, turn_tasks

REFERENCE = "Lily starts with 12 apples and buys 7 more, so she has 12 + 7 = 19 apples. The answer is 19."
SCAFFOLDING = scaffolding_lines(DEFAULT_TEMPLATE)


def plain(messages):
    """Stored messages as the conversations given: without the null `tool` field of plain turns."""
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def reason(text, finished=True, reference=REFERENCE, **options):
    options = {"length_ratio": 3.0, "scaffolding": SCAFFOLDING, **options}
    return rejection_reason(text, finished, reference, **options)


@pytest.mark.parametrize("text, expected", [
    ("She has 12 + 7 = 19 apples now, so the answer is 19.", 19.0),
    ("Total: 1,250 dollars", 1250.0),
    ("It is -3.5 degrees", -3.5),
    ("Each gets 3/4 of a pie", 0.75),
    ("#### 42", 42.0),
    ("no number here", None),
])
def test_final_number_is_the_last_number(text, expected):
    assert final_number(text) == expected


def test_each_rule_rejects_with_its_reason():
    good = "Lily had 12 apples and bought 7 more: 12 + 7 = 19. The answer is 19."
    assert reason(good) is None
    assert reason(good, finished=False) == "token_limit"
    assert reason("   ") == "empty"
    assert reason("Based on the reference answer, the answer is 19.") == "leaks_prompt"
    assert reason("Now it\u2019s your turn: 12 + 7 = 19 apples, the answer is 19.") == "leaks_prompt"
    # A sentence of the template itself (not in the fixed phrase list) is scaffolding too.
    quoted = "Use the reference answer as a guide and reach the same final answer: 19 apples in all, yes."
    assert reason(quoted, scaffolding=scaffolding_lines("{instruction}\nUse the model as a guide please.\n{reference}")) == "leaks_prompt"
    assert reason("Use the model as a guide please. Lily has 19 apples, that is the answer.",
                  scaffolding=scaffolding_lines("{instruction}\nUse the model as a guide please.\n{reference}")) == "leaks_prompt"
    assert reason("19.") == "length_ratio"  # far shorter
    assert reason(good * 5) == "length_ratio"  # far longer
    assert reason(good * 2) is None


@pytest.mark.parametrize("text", [
    "In my response I add 12 and 7: 12 + 7 = 19 apples, so the answer is 19.",
    "Here is your own response: 12 + 7 = 19 apples, so Lily has 19 in all.",
    "Your turn! Lily had 12 apples, bought 7 more, 12 + 7 = 19. The answer is 19.",
    "  your turn: Lily had 12 apples, bought 7 more, 12 + 7 = 19. The answer is 19.",
])
def test_sdft_leak_phrases_are_rejected(text):
    assert reason(text) == "leaks_prompt"


def test_your_turn_inside_an_answer_is_no_leak():
    assert reason("Lily had 12 apples; on her turn she bought 7 more: 12 + 7 = 19. The answer is 19.") is None


def test_verifiers():
    assert reason("Lily ends up with 12 + 7 = 19 apples in all. The answer is 19.", verify="math") is None
    assert reason("Lily ends up with 12 + 8 = 20 apples in all. The answer is 20.", verify="math") == "wrong_answer"
    assert verify_answer("The answer is 4.", "Canberra is the capital.", "math") == "unverifiable"
    assert verify_answer("  The Answer is 19 ", "the answer is 19.", "exact") is None
    assert verify_answer("The answer is 18.", "the answer is 19.", "exact") == "wrong_answer"
    pattern = compile_pattern(r"answer is (\w+)", "regex")
    assert verify_answer("so the answer is 19, clearly", REFERENCE, "regex", pattern) is None
    assert verify_answer("so the answer is 18", REFERENCE, "regex", pattern) == "wrong_answer"
    assert verify_answer("so the answer is 19", "nothing to match", "regex", pattern) == "unverifiable"
    with pytest.raises(FtprepError, match="--pattern"):
        compile_pattern(None, "regex")
    with pytest.raises(FtprepError, match="not a valid regular expression"):
        compile_pattern("(unclosed", "regex")


def test_prompts_per_mode_and_turn():
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"},
        {"role": "assistant", "content": "6"},
    ]
    every = turn_tasks([conversation], "all")
    assert [(task.turn, task.reference) for task in every] == [(2, "4"), (4, "6")]
    last = turn_tasks([conversation], "last")
    assert [(task.turn, task.reference) for task in last] == [(4, "6")]
    # Earlier turns keep their ground truth; the last user message carries the template.
    rephrase = generation_messages(last[0], "rephrase", DEFAULT_TEMPLATE)
    assert rephrase[:3] == conversation[:3]
    assert rephrase[3]["role"] == "user" and "And 3 + 3?" in rephrase[3]["content"] and "\n6\n" in rephrase[3]["content"]
    assert generation_messages(last[0], "self", DEFAULT_TEMPLATE) == conversation[:4]
    with pytest.raises(FtprepError, match=re.escape("{reference}")):
        check_template("Answer this: {instruction}")


def test_split_at_stop_and_batches():
    tokens, finished = split_at_stop(np.array([5, 6, 2, 2, 2]), [2])
    assert tokens.tolist() == [5, 6] and finished
    tokens, finished = split_at_stop(np.array([5, 6, 7]), [2])
    assert tokens.tolist() == [5, 6, 7] and not finished
    lengths = np.array([30, 10, 20, 40])
    batches = prompt_batches(lengths, per_row_tokens=10, budget=70)
    assert sorted(np.concatenate(batches).tolist()) == [0, 1, 2, 3]
    for batch in batches:  # every batch but a lone oversized prompt fits the budget
        assert len(batch) == 1 or len(batch) * (lengths[batch].max() + 10) <= 70


class FixedCandidates:
    """Stands in for sampling: returns the texts it was given, per turn, in order."""

    def __init__(self, per_turn):
        self.per_turn = per_turn
        self.calls = []

    def __call__(self, prompts, seeds):
        self.calls.append((prompts, seeds))
        return [[Candidate(text, finished, len(text.split())) for text, finished in self.per_turn[i]] for i in range(len(prompts))]


def regen_input(ids, conversations):
    """Normalized rows as the regen stage takes them."""
    import pyarrow as pa

    from ftprep.stages.tokenization import MESSAGES_TYPE

    return pa.table({"index": pa.array(range(len(ids)), pa.int64()), "id": pa.array(ids, pa.string()),
                     "messages": pa.array(conversations, MESSAGES_TYPE)})


@pytest.fixture(scope="module")
def scorer(model_dir):
    return hf_scorer(model_dir)


@pytest.mark.slow
def test_lowest_perplexity_accepted_candidate_is_kept_else_ground_truth(tokenizer, scorer):
    conversations = [
        [{"role": "user", "content": "Lily has 12 apples. She buys 7 more. How many apples does she have now?"},
         {"role": "assistant", "content": REFERENCE}],
        [{"role": "user", "content": "There are 25 birds on a fence. 9 fly away. How many are left?"},
         {"role": "assistant", "content": "25 - 9 = 16 birds are still on the fence. The answer is 16."}],
    ]
    fluent = "Lily has 12 apples and buys 7 more, so she has 12 + 7 = 19 apples. The answer is 19."
    odd = "Apples: twelve, plus seven purchased ones, gives nineteen = 19 apples total. Answer 19."
    generator = FixedCandidates([
        [(odd, True), (fluent, True), ("Lily has 12 + 8 = 20 apples. The answer is 20.", True), (fluent + " more", False)],
        [("There are 25 - 9 = 15 birds left on the fence. The answer is 15.", True), ("", True)],
    ])
    any_perplexity = RegenStageSettings(verify="math", max_new_tokens=64, beat_ground_truth=False)
    stage = RegenStage(any_perplexity, tokenizer, generator, scorer, 8192)
    table, stats = stage(regen_input(["a", "b"], conversations))
    rows = table.to_pylist()

    # Row a: two candidates pass (odd, fluent); the one the model finds likelier is kept.
    one_each = RegenStage(any_perplexity, tokenizer, FixedCandidates([[(odd, True)], [(fluent, True)]]), scorer, 8192)
    single, _ = one_each(regen_input(["x", "y"], [conversations[0], conversations[0]]))
    odd_ppl, fluent_ppl = single.column("kept_perplexity").to_pylist()
    truth_ppl = single.column("ground_truth_perplexity").to_pylist()[0]
    print(f"\nperplexity: ground truth {truth_ppl:.3f}, fluent {fluent_ppl:.3f}, odd {odd_ppl:.3f}")
    assert fluent_ppl < truth_ppl < odd_ppl  # what makes the next test meaningful
    expected = fluent if fluent_ppl < odd_ppl else odd
    assert rows[0]["messages"][1]["content"] == expected
    assert rows[0]["source"] == "generated"
    assert rows[0]["candidates_tried"] == 4 and rows[0]["candidates_accepted"] == 2
    assert rows[0]["kept_perplexity"] == pytest.approx(min(odd_ppl, fluent_ppl), rel=1e-4)
    assert rows[0]["rewritten_turns"] == [{"index": 1, "source": "generated", "ground_truth": REFERENCE}]

    # Row b: nothing passes (wrong answer, empty): the ground truth stays, nothing is dropped.
    assert plain(rows[1]["messages"]) == conversations[1]
    assert rows[1]["source"] == "ground_truth"
    assert rows[1]["candidates_accepted"] == 0
    assert rows[1]["kept_perplexity"] == rows[1]["ground_truth_perplexity"]
    assert stats["candidate_rejections"] == {"wrong_answer": 2, "token_limit": 1, "empty": 1}
    assert stats["turns_generated"] == 1 and stats["turns_ground_truth"] == 1
    # Seeds come from the row id and turn, so a row samples the same in any shard.
    assert generator.calls[0][1] == [task_seed(0, "a", 1), task_seed(0, "b", 1)]
    assert task_seed(0, "a", 1) != task_seed(1, "a", 1)


@pytest.mark.slow
def test_multi_turn_rows_and_prompts_too_long(tokenizer, scorer):
    conversation = [
        {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4. The answer is 4."},
        {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "3 + 3 = 6. The answer is 6."},
    ]
    generator = FixedCandidates([[("Two plus two: 2 + 2 = 4. The answer is 4.", True)],
                                 [("Three plus three is 7. The answer is 7.", True)]])
    stage = RegenStage(RegenStageSettings(verify="math", max_new_tokens=16, beat_ground_truth=False), tokenizer, generator, scorer, 8192)
    table, stats = stage(regen_input(["m"], [conversation]))
    row = table.to_pylist()[0]
    assert row["source"] == "mixed"
    assert row["messages"][1]["content"].startswith("Two plus two") and plain(row["messages"])[3] == conversation[3]
    assert [turn["source"] for turn in row["rewritten_turns"]] == ["generated", "ground_truth"]

    # A prompt that leaves no room for --max-new-tokens in the context keeps its ground truth.
    cramped = RegenStage(RegenStageSettings(max_new_tokens=64), tokenizer, FixedCandidates([]), scorer, 40)
    table, stats = cramped(regen_input(["m"], [conversation[:2]]))
    assert plain(table.to_pylist()[0]["messages"]) == conversation[:2]
    assert stats["turns_prompt_too_long"] == 1 and stats["turns_ground_truth"] == 1


@pytest.mark.slow
def test_by_default_a_rewrite_must_be_likelier_than_the_ground_truth(tokenizer, scorer):
    conversation = [{"role": "user", "content": "Lily has 12 apples. She buys 7 more. How many apples does she have now?"},
                    {"role": "assistant", "content": REFERENCE}]
    fluent = "Lily has 12 apples and buys 7 more, so she has 12 + 7 = 19 apples. The answer is 19."
    odd = "Apples: twelve, plus seven purchased ones, gives nineteen = 19 apples total. Answer 19."
    stage = RegenStage(RegenStageSettings(max_new_tokens=64), tokenizer, FixedCandidates([[(odd, True), (fluent, True)], [(odd, True)]]),
                       scorer, 8192)
    table, stats = stage(regen_input(["a", "b"], [conversation, conversation]))
    rows = table.to_pylist()
    assert rows[0]["messages"][1]["content"] == fluent and rows[0]["candidates_accepted"] == 1
    assert rows[0]["kept_perplexity"] < rows[0]["ground_truth_perplexity"]
    assert rows[1]["source"] == "ground_truth" and plain(rows[1]["messages"]) == conversation  # odd alone is worse than the truth
    assert stats["candidate_rejections"] == {"not_likelier": 2}
