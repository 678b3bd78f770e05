"""Turn rows of any supported chat format into one normalized conversation each.

Formats: OpenAI `messages` (role/content), ShareGPT `conversations` (from/value), Alpaca
(instruction/input/output) and prompt/completion (strings or message lists).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pyarrow as pa

from ftprep.stages import Rejects
from ftprep.stages.errors import FtprepError, RowError, Setting, SettingError
from ftprep.stages.tokenization import MESSAGES_TYPE, TOOL_KEYS

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")
# OpenAI tool use: tool results, the newer system role, the legacy function role. Whether the
# model's chat template renders them is the tokenizer's to find out.
TOOL_ROLES = ("tool", "developer", "function")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
}
# The columns that identify each format, in the order detection tries them.
FORMAT_KEYS = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}

Message = dict[str, str]


def detect_format(rows: Iterable[Mapping], source: str | None = None) -> str:
    """Pick the format most of the sample rows have the columns of (`source`: what the rows are
    from, for the error)."""
    votes = dict.fromkeys(FORMATS, 0)
    seen: set[str] = set()
    for row in rows:
        seen.update(row)
        for name, keys in FORMAT_KEYS.items():
            if all(key in row for key in keys):
                votes[name] += 1
                break
    best = max(votes, key=votes.get)
    if votes[best] == 0:
        raise SettingError("cannot tell the data format{source} from the columns {columns}: pass {format}", field="format",
                           source=f" of {source}" if source else "", columns=sorted(seen),
                           format=Setting("format", "|".join(FORMATS)))
    return best


# What readers hand this stage: per source row its index and either its JSON text or why it
# could not be read.
SOURCE_SCHEMA = pa.schema([("index", pa.int64()), ("row", pa.large_string()), ("error", pa.string())])


@dataclass(frozen=True)
class NormalizeStage:
    """Source rows (SOURCE_SCHEMA) in; `index`, `id` and the normalized `messages` out."""

    fmt: str

    def __call__(self, table: pa.Table, rejects: Rejects) -> tuple[pa.Table, dict]:
        indices, ids, conversations = [], [], []
        columns = (table.column(name).to_pylist() for name in ("index", "row", "error"))
        for index, text, error in zip(*columns):
            try:
                row = parse_row(text, error)
            except RowError as read_error:
                rejects.add(index, str(index), "read", str(read_error))
                continue
            try:
                conversations.append(normalize_row(row, self.fmt))
            except RowError as normalize_error:
                rejects.add(index, row_id(row, index), "normalize", str(normalize_error))
                continue
            indices.append(index)
            ids.append(row_id(row, index))
        normalized = pa.table({"index": pa.array(indices, pa.int64()), "id": pa.array(ids, pa.string()),
                               "messages": pa.array(conversations, MESSAGES_TYPE)})
        return normalized, {}


def parse_row(text: str | None, error: str | None) -> dict:
    """A source row from its JSON text, or the reader's reason it has none."""
    if error is not None:
        raise RowError(error)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RowError(f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}") from None
    if not isinstance(row, dict):
        raise RowError("line is not a JSON object")
    return row


def row_id(row: Mapping, index: int) -> str:
    """The row's id as text: a string as it is, a number as written, anything else (a list, a
    boolean) as its JSON text, never Python's repr; the source index where there is none."""
    value = row.get("id")
    if value is None or value == "":
        return str(index)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def normalize_row(row: Mapping, fmt: str) -> list[Message]:
    """Return the conversation as [{"role", "content"}], or raise RowError with the reason."""
    if fmt == "messages":
        messages = _message_list(_field(row, "messages"), "role", "content",
                                 {role: role for role in ROLES + TOOL_ROLES}, with_tools=True)
    elif fmt == "sharegpt":
        messages = _message_list(_field(row, "conversations"), "from", "value", SHAREGPT_ROLES)
    elif fmt == "alpaca":
        instruction = _string(_field(row, "instruction"), "instruction")
        extra = _string(row.get("input") or "", "input")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": _string(row["system"], "system")})
        messages += [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _string(_field(row, "output"), "output")},
        ]
    elif fmt == "prompt_completion":
        messages = _turns(_field(row, "prompt"), "user") + _turns(_field(row, "completion"), "assistant")
    else:
        raise FtprepError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    _check_conversation(messages)
    return messages


def _field(row: Mapping, key: str):
    if key not in row or row[key] is None:
        raise RowError(f"missing field '{key}'")
    return row[key]


def _string(value, name: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{name} is {type(value).__name__}, not a string")
    return value


def _turns(value, default_role: str) -> list[Message]:
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    return _message_list(value, "role", "content", {role: role for role in ROLES})


def _message_list(value, role_key: str, content_key: str, role_names: Mapping[str, str],
                  with_tools: bool = False) -> list[Message]:
    if not isinstance(value, list):
        raise RowError(f"conversation is {type(value).__name__}, not a list of messages")
    messages = []
    for turn in value:
        if not isinstance(turn, Mapping):
            raise RowError("a message is not an object")
        calls = turn.get("tool_calls") if with_tools else None
        if role_key not in turn or (content_key not in turn and not calls):
            raise RowError(f"a message lacks '{role_key}' or '{content_key}'")
        role = turn[role_key]
        if not isinstance(role, str):
            raise RowError(f"a message's '{role_key}' is {type(role).__name__}, not a string")
        if role not in role_names:
            raise RowError(f"unknown role {role!r}")
        content = turn.get(content_key)
        message = {"role": role_names[role], "content": "" if content is None and calls else _string(content, "message content")}
        if with_tools:
            message.update(_tool_fields(turn))
        messages.append(message)
    return messages


def _tool_fields(turn: Mapping) -> dict:
    """An OpenAI message's tool-use keys (tool_calls, tool_call_id, name) as one JSON text in
    `tool`, where the normalized messages keep them; none: no key."""
    fields = {key: turn[key] for key in TOOL_KEYS if turn.get(key) is not None}
    if isinstance(turn.get("tool"), str):  # ftprep's own output read back (score a regen folder)
        try:
            fields = {**json.loads(turn["tool"]), **fields}
        except json.JSONDecodeError:
            raise RowError("a message's 'tool' field is not JSON") from None
    if "tool_calls" in fields:
        fields["tool_calls"] = [_tool_call(call) for call in _list(fields["tool_calls"], "tool_calls")]
    return {"tool": json.dumps(fields, ensure_ascii=False, sort_keys=True)} if fields else {}


def _tool_call(call) -> dict:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping) or "name" not in call["function"]:
        raise RowError("a tool call lacks function.name")
    function = dict(call["function"])
    # OpenAI sends the arguments as JSON text; chat templates expect an object (they render it
    # with tojson), so text that holds a JSON object becomes one.
    if isinstance(function.get("arguments"), str):
        try:
            parsed = json.loads(function["arguments"])
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            function["arguments"] = parsed
    return {**call, "function": function}


def _list(value, name: str) -> list:
    if not isinstance(value, list):
        raise RowError(f"{name} is {type(value).__name__}, not a list")
    return value


def _check_conversation(messages: list[Message]) -> None:
    if not messages:
        raise RowError("empty conversation")
    if not any(message["role"] == "assistant" for message in messages):
        raise RowError("no assistant turn")
    first = next(message["role"] for message in messages if message["role"] != "system")
    if first == "assistant":
        raise RowError("conversation starts with an assistant turn: it needs a user message before it")
    if any(message["role"] == "assistant" and not message["content"].strip() and not _calls_tools(message)
           for message in messages):
        raise RowError("empty assistant turn")


def _calls_tools(message: Message) -> bool:
    return bool(message.get("tool") and json.loads(message["tool"]).get("tool_calls"))
