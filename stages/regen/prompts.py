"""What the model is asked: one generation prompt per assistant turn to rewrite.

A turn is rewritten in the context of the original conversation before it (earlier turns
keep their ground truth), so every rewrite answers exactly what the reference answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftprep.stages.errors import Setting, SettingError

MODES = ("rephrase", "self")
PLACEHOLDERS = ("{instruction}", "{reference}")

# SDFT-style: the model sees the reference and writes its own answer, so the rewrite keeps
# the reference's content in the model's own distribution.
DEFAULT_TEMPLATE = """{instruction}

Here is a reference answer to the request above:
{reference}

Now write your own answer to the request. Use the reference answer as a guide and reach the same final answer, in your own words."""


@dataclass(frozen=True)
class TurnTask:
    row: int  # position of the conversation in its batch
    turn: int  # index of the assistant message to rewrite
    context: list  # the messages before it
    reference: str  # its ground-truth content


def check_template(template: str) -> str:
    missing = [name for name in PLACEHOLDERS if name not in template]
    if missing:
        raise SettingError("the {template} text lacks {missing}: it must show both the instruction and the reference",
                           field="template", template=Setting("template"), missing=" and ".join(missing))
    return template


def turn_tasks(conversations: list[list[dict]], train_on: str) -> list[TurnTask]:
    tasks = []
    for row, messages in enumerate(conversations):
        turns = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
        for turn in turns[-1:] if train_on == "last" else turns:
            tasks.append(TurnTask(row, turn, messages[:turn], messages[turn]["content"]))
    return tasks


def generation_messages(task: TurnTask, mode: str, template: str) -> list[dict]:
    """The conversation the model continues: in rephrase mode its last user message carries
    the instruction and the reference answer inside the template."""
    if mode == "self":
        return list(task.context)
    last_user = max((i for i, message in enumerate(task.context) if message["role"] == "user"), default=None)
    if last_user is None:
        instruction, before, after = "", list(task.context), []
    else:
        instruction, before, after = task.context[last_user]["content"], task.context[:last_user], task.context[last_user + 1 :]
    content = template.replace("{instruction}", instruction).replace("{reference}", task.reference)
    return [*before, {"role": "user", "content": content}, *after]


def with_response(task: TurnTask, content: str) -> list[dict]:
    return [*task.context, {"role": "assistant", "content": content}]


def scaffolding_lines(template: str, min_chars: int = 16) -> list[str]:
    """The template's own sentences (placeholders removed): a rewrite quoting one of them
    is talking about the prompt, not answering it."""
    text = template
    for name in PLACEHOLDERS:
        text = text.replace(name, "\n")
    lines = (line.strip().rstrip(":").lower() for line in text.splitlines())
    return [line for line in lines if len(line) >= min_chars]
