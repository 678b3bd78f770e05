"""Tool-use conversations (OpenAI format): tool / developer / function roles and assistant
tool_calls render through a chat template that knows them, and their assistant turns score;
a template that cannot render them rejects the row with a reason that says so."""

import json

import numpy as np
import pytest
from conftest import DATA, flat, load_table, read_jsonl, run_cli

from ftprep.stages.normalize import normalize_row
from ftprep.stages.tokenization import template_messages

TOOLS = DATA / "tools.jsonl"
TOOLS_TEMPLATE = "data/templates/chatml-tools.jinja"


def test_tool_messages_normalize_with_their_tool_fields():
    rows = {row["id"]: row for row in read_jsonl(TOOLS)}
    messages = normalize_row(rows["weather"], "messages")
    assert [message["role"] for message in messages] == ["developer", "user", "assistant", "tool", "assistant"]
    call = json.loads(messages[2]["tool"])["tool_calls"][0]
    assert messages[2]["content"] == "" and call["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert json.loads(messages[3]["tool"]) == {"tool_call_id": "call_1"}
    assert "tool" not in messages[1]
    rendered = template_messages(messages)
    assert rendered[2]["tool_calls"][0]["function"]["name"] == "get_weather" and "tool" not in rendered[2]
    assert rendered[1] == {"role": "user", "content": "Is it raining in Paris?"}


@pytest.mark.slow
def test_tool_use_rows_render_and_score_with_a_template_that_knows_tools(tmp_path, tiny_model_dir, tokenizer):
    output = tmp_path / "scored"
    run_cli("score", TOOLS, "-o", output, "--model", tiny_model_dir, "--chat-template", TOOLS_TEMPLATE, "--backend", "hf")
    table = load_table(output)
    assert table.column("id").to_pylist() == ["weather", "sum", "legacy", "plain"]
    assert not (output / "rejects.jsonl").read_text().strip()

    rows = table.to_pylist()
    weather = rows[0]
    ids, mask = np.array(weather["input_ids"]), np.array(weather["assistant_mask"], bool)
    trained = tokenizer.decode(ids[mask].tolist(), skip_special_tokens=False)
    # The tool call is trained on as the template renders it; the tool's result is not.
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>' in trained
    assert "Yes, there is light rain in Paris" in trained and "light rain\", \"celsius" not in trained
    text = tokenizer.decode(ids.tolist(), skip_special_tokens=False)
    assert "<|im_start|>tool\n{\"city\": \"Paris\"" in text and "<|im_start|>developer\n" in text
    # Two assistant turns, each with its end-of-turn token.
    assert trained.count("<|im_end|>") == 2
    logprobs = flat(table, "logprobs")
    assert np.isfinite(logprobs[flat(table, "assistant_mask").astype(bool) & ~np.isnan(logprobs)]).all()
    assert rows[1]["messages"][1]["content"] == "I will add them with the calculator."
    assert json.loads(rows[1]["messages"][1]["tool"])["tool_calls"][0]["function"]["arguments"] == {"a": 1234, "b": 5678}


@pytest.mark.slow
def test_a_template_that_drops_tool_calls_rejects_those_rows_only(tmp_path, tiny_model_dir):
    """SmolLM2's own ChatML template renders any role but never an assistant's tool_calls."""
    output = tmp_path / "scored"
    run_cli("score", TOOLS, "-o", output, "--model", tiny_model_dir, "--backend", "hf")
    assert load_table(output).column("id").to_pylist() == ["legacy", "plain"]
    rejects = {reject["id"]: reject["reason"] for reject in read_jsonl(output / "rejects.jsonl")}
    assert set(rejects) == {"weather", "sum"}
    assert all("chat template does not render tool calls" in reason for reason in rejects.values())


@pytest.mark.slow
def test_a_template_that_refuses_a_role_says_so(tmp_path, tiny_model_dir):
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% for m in messages %}{% if m['role'] not in ['system', 'user', 'assistant'] %}"
                      "{{ raise_exception('roles must be system, user or assistant') }}{% endif %}"
                      "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
                      "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    output = tmp_path / "scored"
    run_cli("score", TOOLS, "-o", output, "--model", tiny_model_dir, "--chat-template", strict, "--backend", "hf")
    assert load_table(output).column("id").to_pylist() == ["plain"]
    rejects = {reject["id"]: reject["reason"] for reject in read_jsonl(output / "rejects.jsonl")}
    assert rejects["legacy"] == ("chat template cannot render this tool-use conversation: "
                                 "roles must be system, user or assistant")
    assert rejects["weather"].startswith("chat template cannot render this tool-use conversation")


@pytest.mark.slow
def test_a_scored_tool_use_folder_reads_back_with_its_tool_fields(tmp_path, tiny_model_dir):
    """ftprep's own output as input (a regen folder, a scored one): the `tool` field carries the calls."""
    first, second = tmp_path / "first", tmp_path / "second"
    run_cli("score", TOOLS, "-o", first, "--model", tiny_model_dir, "--chat-template", TOOLS_TEMPLATE, "--backend", "hf")
    run_cli("score", first, "-o", second, "--model", tiny_model_dir, "--chat-template", TOOLS_TEMPLATE, "--backend", "hf")
    again, once = load_table(second), load_table(first)
    assert again.column("messages").to_pylist() == once.column("messages").to_pylist()
    assert again.column("input_ids").to_pylist() == once.column("input_ids").to_pylist()
