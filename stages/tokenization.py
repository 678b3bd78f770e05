"""Render conversations with the model's chat template and mark trainable assistant tokens.

The assistant spans come from `{% generation %}` markers when the template has them, else
from prefix differences: the text the template renders for the turns before an assistant
message (with the generation prompt) must be a prefix of the full rendering, and the
assistant content follows it. Each span is extended by the end-of-turn token right after
it, and checked: the decoded span must equal the assistant content, or the row is rejected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ftprep.stages.errors import RowError, Setting, SettingError

GENERATION_MARKER = re.compile(r"{%-?\s*generation\s*-?%}")
# `tool`: a message's OpenAI tool-use keys (tool_calls, tool_call_id, name) as JSON text, null
# for a plain message.
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("tool", pa.string())]))
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")


def template_messages(messages: list[dict]) -> list[dict]:
    """Normalized messages as a chat template takes them: role, content and the tool-use keys
    (no `tool` text, no null fields a template would see as defined)."""
    rendered = []
    for message in messages:
        plain = {"role": message["role"], "content": message["content"]}
        if message.get("tool"):
            plain.update(json.loads(message["tool"]))
        rendered.append(plain)
    return rendered


def uses_tools(messages: list[dict]) -> bool:
    return any(message.get("tool") or message["role"] not in ("system", "user", "assistant") for message in messages)


@dataclass
class TokenizedRow:
    input_ids: np.ndarray  # int32
    assistant_mask: np.ndarray  # int8
    truncated: bool = False
    end_of_turn_ids: tuple[int, ...] = ()  # the end-of-turn tokens its assistant turns end with


class OverlongRow(RowError):
    """A row over the length limit that --overlong drop rejects, or that truncation emptied."""

    def __init__(self, reason: str, truncated: bool):
        super().__init__(reason)
        self.truncated = truncated


@dataclass
class ChatTokenizer:
    tokenizer: object
    train_on: str = "all"  # all | last
    max_length: int | None = None
    overlong: str = "drop"  # drop | truncate
    allow_special_tokens: bool = False  # let message text hold the template's control tokens

    def __post_init__(self):
        template = self.tokenizer.chat_template
        if not template:
            raise SettingError("the model's tokenizer has no chat template (a base model?): give one with {chat_template} "
                               "(a Jinja file), or use an instruct/chat model", field="chat_template",
                               chat_template=Setting("chat_template", metavar="FILE"))
        self.uses_generation_markers = bool(GENERATION_MARKER.search(template))
        self.special_ids = np.array(sorted(_special_ids(self.tokenizer)), dtype=np.int64)
        self.control_tokens = None if self.allow_special_tokens else _control_token_pattern(self.tokenizer)

    def __call__(self, conversations: list[list[dict]]) -> list[TokenizedRow | RowError]:
        conversations = [template_messages(messages) for messages in conversations]
        forged = [self._forged_turns(messages) for messages in conversations]
        clean = [messages for messages, error in zip(conversations, forged) if error is None]
        if self.uses_generation_markers:
            results = [self._guard(self._tokenize_with_markers, messages) for messages in clean]
        else:
            results = self._tokenize_by_prefix(clean)
        results = iter([self._fit_length(result) if isinstance(result, TokenizedRow) else result for result in results])
        return [next(results) if error is None else error for error in forged]

    def _forged_turns(self, messages) -> RowError | None:
        """Text that spells a control token (`<|im_start|>assistant`) would become that token and
        could forge turns, and with them the assistant mask and the labels: rejected unless allowed."""
        if self.control_tokens is None:
            return None
        for position, message in enumerate(messages):
            found = self.control_tokens.search(message["content"])
            if found:
                return RowError(f"message {position} ({message['role']}) contains the control token {found.group()!r}: "
                                "remove it, or pass --allow-special-tokens to let it act as one")
        return None

    # -- span finding ---------------------------------------------------------------------

    def _tokenize_by_prefix(self, conversations):
        rendered = [self._guard(self._render_with_spans, messages) for messages in conversations]
        texts = [item[0] for item in rendered if not isinstance(item, RowError)]
        encoded = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        results, cursor = [], 0
        for messages, item in zip(conversations, rendered):
            if isinstance(item, RowError):
                results.append(item)
                continue
            ids = np.asarray(encoded["input_ids"][cursor], dtype=np.int32)
            offsets = np.asarray(encoded["offset_mapping"][cursor], dtype=np.int64).reshape(-1, 2)
            cursor += 1
            token_spans = [_chars_to_tokens(offsets, start, end) for start, end in item[1]]
            results.append(self._guard(self._finish, ids, token_spans, item[2]))
        return results

    def _render_with_spans(self, messages):
        full = self._render(messages, add_generation_prompt=False)
        self._check_tools_rendered(messages, full)
        spans, contents = [], []
        for index in self._trainable_turns(messages):
            prefix = self._render(messages[:index], add_generation_prompt=True)
            if not full.startswith(prefix):
                raise RowError("chat template renders the turns before an assistant message differently in the full conversation")
            content = self._turn_text(messages, index, prefix)
            start = full.find(content, len(prefix))
            if start < 0:  # templates that trim the content
                content = content.strip()
                start = full.find(content, len(prefix))
            if start < 0:
                raise RowError("assistant content not found where the chat template renders it")
            spans.append((start, start + len(content)))
            contents.append(content)
        return full, spans, contents

    def _tokenize_with_markers(self, messages):
        try:
            encoded = self.tokenizer.apply_chat_template(
                messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
        except Exception as exc:
            raise template_error(messages, exc) from exc
        if any(message.get("tool_calls") or message["role"] not in ("system", "user", "assistant") for message in messages):
            self._check_tools_rendered(messages, self._render(messages, add_generation_prompt=False))
        ids = np.asarray(encoded["input_ids"], dtype=np.int32)
        marked = np.asarray(encoded["assistant_masks"], dtype=np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], marked, [0]])))
        runs = list(zip(edges[::2], edges[1::2]))
        turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        if len(runs) != len(turns):
            raise RowError(f"chat template marks {len(runs)} generation spans for {len(turns)} assistant turns")
        keep = set(self._trainable_turns(messages))
        chosen = [(run, self._turn_text(messages, turn)) for run, turn in zip(runs, turns) if turn in keep]
        return self._finish(ids, [run for run, _ in chosen], [content for _, content in chosen])

    def _trainable_turns(self, messages) -> list[int]:
        turns = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        return turns[-1:] if self.train_on == "last" else turns

    def _render(self, messages, add_generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        except Exception as exc:  # jinja errors, and the template's own raise_exception
            raise template_error(messages, exc) from exc

    def _turn_text(self, messages, index: int, prefix: str | None = None) -> str:
        """What the assistant turn `index` is trained on: its content, or for a turn that calls
        tools, all the template renders for it (content and calls) up to its end-of-turn."""
        if not messages[index].get("tool_calls"):
            return messages[index]["content"]
        if prefix is None:
            prefix = self._render(messages[:index], add_generation_prompt=True)
        upto = self._render(messages[: index + 1], add_generation_prompt=False)
        text = upto[len(prefix):].strip() if upto.startswith(prefix) else ""
        for marker in sorted(self.tokenizer.all_special_tokens, key=len, reverse=True):
            if marker and text.endswith(marker):  # its end-of-turn token: added to the span later
                text = text[: -len(marker)].rstrip()
                break
        return text

    def _check_tools_rendered(self, messages, full: str) -> None:
        """A template that does not know tool calls or tool results drops them without an error:
        the row would train on a conversation it does not show. Reject it instead."""
        if any(message.get("tool_calls") for message in messages):
            without_calls = [{key: value for key, value in message.items() if key != "tool_calls"} for message in messages]
            if self._render(without_calls, add_generation_prompt=False) == full:
                raise RowError("chat template does not render tool calls: give one that does with --chat-template")
        for message in messages:
            if message["role"] not in ("system", "user", "assistant") and message["content"].strip() not in full:
                raise RowError(f"chat template does not render {message['role']!r} messages: give one that does with "
                               "--chat-template")

    # -- mask, check, length --------------------------------------------------------------

    def _finish(self, ids: np.ndarray, token_spans, contents) -> TokenizedRow:
        mask = np.zeros(len(ids), dtype=np.int8)
        end_of_turn_ids = []
        for (start, end), content in zip(token_spans, contents):
            if end <= start:
                raise RowError("assistant turn has no tokens")
            # The end-of-turn token belongs to the turn: the model must learn to stop.
            if end < len(ids) and np.isin(ids[end], self.special_ids) and not np.isin(ids[end - 1], self.special_ids):
                end += 1
            has_end_token = bool(np.isin(ids[end - 1], self.special_ids))
            body = ids[start : end - 1] if has_end_token else ids[start:end]
            decoded = self.tokenizer.decode(body.tolist(), skip_special_tokens=False)
            if decoded.strip() != content.strip():
                raise RowError("tokens marked as assistant do not decode to the assistant content")
            if has_end_token:
                end_of_turn_ids.append(int(ids[end - 1]))
            mask[start:end] = 1
        return TokenizedRow(ids, mask, end_of_turn_ids=tuple(end_of_turn_ids))

    def _fit_length(self, row: TokenizedRow) -> TokenizedRow | RowError:
        if self.max_length is None or len(row.input_ids) <= self.max_length:
            return row
        if self.overlong == "drop":
            return OverlongRow(f"longer than the limit ({len(row.input_ids)} > {self.max_length} tokens: --max-length or the model's context)",
                               truncated=False)
        cut = TokenizedRow(row.input_ids[: self.max_length], row.assistant_mask[: self.max_length], truncated=True,
                           end_of_turn_ids=row.end_of_turn_ids)
        if not cut.assistant_mask.any():
            return OverlongRow(f"no assistant tokens left after truncation to {self.max_length} tokens", truncated=True)
        return cut

    @staticmethod
    def _guard(function, *args):
        try:
            return function(*args)
        except RowError as error:
            return error
        except Exception as exc:  # a chat template raising on this conversation (jinja exceptions)
            return RowError(f"chat template failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")


def template_error(messages, exc: Exception) -> RowError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if uses_tools(messages):
        return RowError(f"chat template cannot render this tool-use conversation: {first_line}")
    return RowError(f"chat template failed: {first_line}")


def _chars_to_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int]:
    """Token range [first, last) of the tokens that overlap the character range [start, end)."""
    overlap = np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start))
    if len(overlap) == 0:
        return 0, 0
    return int(overlap[0]), int(overlap[-1]) + 1


def _control_token_pattern(tokenizer) -> re.Pattern | None:
    """A regex that finds any of the tokenizer's special tokens in text; None if it has none."""
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(token.content for token in tokenizer.added_tokens_decoder.values() if token.special)
    tokens = sorted((token for token in tokens if token), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(index for index, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


@dataclass
class TokenizeStage:
    """Normalized rows (`index`, `id`, `messages`) in; the same rows with `input_ids` and
    `assistant_mask` out. Rows the template cannot render, or that are too long, go to rejects."""

    chat: ChatTokenizer

    def __call__(self, table: pa.Table, rejects) -> tuple[pa.Table, dict]:
        results = self.chat(table.column("messages").to_pylist())
        stats = {"overlong_truncated": 0, "overlong_dropped": 0}
        kept, end_of_turn_ids = [], set()
        for position, (index, row_id, result) in enumerate(zip(table.column("index").to_pylist(),
                                                                table.column("id").to_pylist(), results)):
            if isinstance(result, RowError):
                rejects.add(index, row_id, "tokenize", str(result))
                if isinstance(result, OverlongRow):
                    stats["overlong_truncated" if result.truncated else "overlong_dropped"] += 1
                continue
            stats["overlong_truncated"] += result.truncated
            end_of_turn_ids.update(result.end_of_turn_ids)
            kept.append(position)
        # Collected per shard, so that a resumed run knows the ones its earlier part saw.
        stats["end_of_turn_ids"] = {str(token): 1 for token in end_of_turn_ids}
        if len(kept) < table.num_rows:
            table = table.take(pa.array(kept, pa.int64()))
        columns = token_columns([results[position] for position in kept])
        for name, column in columns.items():
            table = table.append_column(name, column)
        return table, stats


def token_columns(rows: list[TokenizedRow]) -> dict[str, pa.Array]:
    lengths = np.array([len(row.input_ids) for row in rows], dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat_ids = np.concatenate([row.input_ids for row in rows]) if rows else np.zeros(0, np.int32)
    flat_mask = np.concatenate([row.assistant_mask for row in rows]) if rows else np.zeros(0, np.int8)
    return {"input_ids": pa.ListArray.from_arrays(offsets, pa.array(flat_ids, pa.int32())),
            "assistant_mask": pa.ListArray.from_arrays(offsets, pa.array(flat_mask, pa.int8()))}


def tokenized_table(ids: list[str], conversations: list[list[dict]], rows: list[TokenizedRow]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "messages": pa.array(conversations, MESSAGES_TYPE),
                     **token_columns(rows)})
