"""What differs between the run an output was made by and the run asked for now, named with both
values: "--threshold 2.5 then, --threshold 3 now", "the input (data.jsonl) changed: 1,204 bytes
then, 1,377 now". A run's identity (what a resumed run must share) is a nested dict: its settings,
its input's path, size and time, the model's fingerprint, the scored run's identity (mask)."""

from __future__ import annotations

import datetime

from ftprep.stages.errors import FtprepError, Setting, SettingError

SHOWN = 3  # differences named in one line; the others counted
# Settings that are positional arguments (no --flag to name them) in the commands whose runs resume.
ARGUMENTS = ("input", "scored", "folder")


def flattened(identity, prefix: tuple = ()) -> dict[tuple, object]:
    """Every leaf of a nested identity, by its path of keys."""
    if not isinstance(identity, dict):
        return {prefix: identity}
    leaves = {}
    for key, value in identity.items():
        leaves.update(flattened(value, (*prefix, key)))
    return leaves


def differences(then: dict, now: dict) -> list[tuple[tuple, object, object]]:
    """(path, value then, value now) for each leaf that differs, in the order of `now`'s keys."""
    old, new = flattened(then or {}), flattened(now or {})
    missing = object()
    paths = list(new) + [path for path in old if path not in new]
    return [(path, old.get(path), new.get(path)) for path in paths if old.get(path, missing) != new.get(path, missing)]


LONGEST_VALUE = 60


def _value(path: tuple, value) -> str:
    """A value as the message shows it (escaped for the template it goes in)."""
    if value is None:
        text = "none"
    elif path[-1] == "mtime_ns" and isinstance(value, int):
        text = datetime.datetime.fromtimestamp(value / 1e9).isoformat(sep=" ", timespec="seconds")
    elif path[-1] == "size" and isinstance(value, int):
        text = f"{value:,} bytes"
    else:
        text = str(value)
        if len(text) > LONGEST_VALUE and path[-1] not in (*ARGUMENTS, "path"):  # paths whole: their ends differ
            text = text[:LONGEST_VALUE - 3] + "..."
    return _escaped(text)


INPUT_PARTS = {"size": "size", "mtime_ns": "modification time", "files": "files", "path": "path", "hub": "hub id",
               "split": "split"}


def _phrase(path: tuple, then, now, values: dict) -> str:
    """One difference as a phrase of the message template (settings as {placeholders} in `values`)."""
    where = ""
    if path[0] == "scored":  # mask: the scored dataset was made again, by another run
        where, path = "the scored dataset's ", path[1:]
    if len(path) == 2 and path[0] == "settings" and (path[1] in ARGUMENTS or then is None or now is None):
        return f"{where}{_escaped(path[1])}: {_value(path, then)} then, {_value(path, now)} now"
    if len(path) == 2 and path[0] == "settings":
        key = f"s{len(values)}"
        values[f"{key}a"], values[f"{key}b"] = Setting(path[1], then), Setting(path[1], now)
        return f"{where}{{{key}a}} then, {{{key}b}} now"
    if len(path) == 2 and path[0] == "input":
        name = _escaped(INPUT_PARTS.get(path[1], path[1]))
        return f"{where or 'the '}input's {name}: {_value(path, then)} then, {_value(path, now)} now"
    name = _escaped(".".join(map(str, path)))
    return f"{where}{name}: {_value(path, then)} then, {_value(path, now)} now"


def changed_error(what: str, then: dict, now: dict, fix: str) -> FtprepError:
    """The error for an output made by another run: `what` ("FOLDER holds an ftprep output made
    with other settings"), what differs with both values, and `fix`."""
    found = differences(then, now)
    values: dict = {}
    phrases = [_phrase(path, old, new, values) for path, old, new in found[:SHOWN]]
    if len(found) > SHOWN:
        phrases.append(f"{len(found) - SHOWN} more")
    detail = f" ({'; '.join(phrases)})" if phrases else ""
    template = _escaped(what) + detail + ": " + _escaped(fix)
    first_setting = next((path[-1] for path, _, _ in found if len(path) == 2 and path[0] == "settings"), None)
    if first_setting is None:
        return FtprepError(template.format())
    return SettingError(template, field=first_setting, **values)


def _escaped(text: str) -> str:
    return str(text).replace("{", "{{").replace("}", "}}")

