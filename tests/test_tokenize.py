"""Chat-template rendering and the assistant mask, checked on two templates."""

import copy

import numpy as np
import pytest
from conftest import DATA, read_jsonl

from ftprep.stages.errors import RowError
from ftprep.stages.tokenization import ChatTokenizer, OverlongRow

# SmolLM2's own ChatML template, rewritten with {% generation %} markers around the assistant
# content and its end-of-turn token, as TRL-ready templates do.
GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def conversations():
    return [row["messages"] for row in read_jsonl(DATA / "sample.jsonl")]


@pytest.fixture(scope="module")
def marker_tokenizer(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.chat_template = GENERATION_TEMPLATE
    return other


def assistant_texts(tokenizer, row):
    """Decoded text of each contiguous run of marked tokens."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], row.assistant_mask, [0]])))
    return [tokenizer.decode(row.input_ids[start:end].tolist()) for start, end in zip(edges[::2], edges[1::2])]


@pytest.mark.parametrize("template", ["smollm2", "generation-markers"])
def test_marked_spans_are_the_assistant_contents_plus_end_of_turn(template, tokenizer, marker_tokenizer, conversations):
    chosen = tokenizer if template == "smollm2" else marker_tokenizer
    chat = ChatTokenizer(chosen)
    assert chat.uses_generation_markers == (template == "generation-markers")
    rows = chat(conversations)
    assert not [row for row in rows if isinstance(row, RowError)]
    for conversation, row in zip(conversations, rows):
        contents = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
        assert assistant_texts(chosen, row) == contents
    assert {token for row in rows for token in row.end_of_turn_ids} == {tokenizer.convert_tokens_to_ids("<|im_end|>")}


def test_both_span_methods_agree_token_for_token(tokenizer, marker_tokenizer, conversations):
    by_prefix = ChatTokenizer(tokenizer)(conversations)
    by_markers = ChatTokenizer(marker_tokenizer)(conversations)
    for a, b in zip(by_prefix, by_markers):
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.assistant_mask, b.assistant_mask)


def test_input_ids_are_the_template_rendering(tokenizer, conversations):
    row = ChatTokenizer(tokenizer)(conversations[:1])[0]
    expected = tokenizer.apply_chat_template(conversations[0], tokenize=True, return_dict=True)["input_ids"]
    assert row.input_ids.tolist() == list(expected)
    assert row.input_ids.dtype == np.int32 and row.assistant_mask.dtype == np.int8


def test_train_on_last_marks_only_the_last_assistant_turn(tokenizer, conversations):
    multi = [c for c in conversations if sum(m["role"] == "assistant" for m in c) == 2]
    for conversation, row in zip(multi, ChatTokenizer(tokenizer, train_on="last")(multi)):
        assert assistant_texts(tokenizer, row) == [conversation[-1]["content"] + "<|im_end|>"]


def test_template_that_changes_the_content_rejects_the_row(tokenizer):
    shouting = copy.deepcopy(tokenizer)
    shouting.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    rows = ChatTokenizer(shouting)([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there."}]])
    assert isinstance(rows[0], RowError) and "assistant content not found" in str(rows[0])


def test_span_check_rejects_tokens_that_cross_the_content_edge(tokenizer):
    # No newline between the generation prompt and the content: "assistant" + "Hello" may merge,
    # and a token that straddles the edge must not pass as assistant content.
    glued = copy.deepcopy(tokenizer)
    glued.chat_template = tokenizer.chat_template.replace("'<|im_start|>' + message['role'] + '\n'", "'<|im_start|>' + message['role']")
    glued.chat_template = glued.chat_template.replace("'<|im_start|>assistant\n'", "'<|im_start|>assistant'")
    rows = ChatTokenizer(glued)([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "s are great."}]])
    assert isinstance(rows[0], RowError) and "do not decode" in str(rows[0])


def test_max_length_drop_and_truncate(tokenizer, conversations):
    lengths = [len(row.input_ids) for row in ChatTokenizer(tokenizer)(conversations)]
    limit = int(np.median(lengths))
    dropped = ChatTokenizer(tokenizer, max_length=limit, overlong="drop")(conversations)
    assert sum(isinstance(r, OverlongRow) for r in dropped) == sum(n > limit for n in lengths)
    truncated = ChatTokenizer(tokenizer, max_length=limit, overlong="truncate")(conversations)
    assert sum(getattr(r, "truncated", False) for r in truncated) == sum(n > limit for n in lengths)
    for row, n in zip(truncated, lengths):
        if not isinstance(row, RowError):
            assert len(row.input_ids) == min(n, limit) and row.truncated == (n > limit)


def test_system_role_the_template_refuses_is_a_row_error(tokenizer):
    strict = copy.deepcopy(tokenizer)
    strict.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + tokenizer.chat_template
    rows = ChatTokenizer(strict)([[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    assert isinstance(rows[0], RowError) and "System role not supported" in str(rows[0])
