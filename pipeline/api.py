"""The commands as Python functions (`ftprep.score`, `ftprep.mask`, ... `ftprep.hft_plan`), made
from the same declarations as the command line: each function's parameters are its command's
settings (positional arguments stay positional, options become keyword arguments, with their
defaults), then the options it shares (overwrite=, the engine's, quiet=, verbose=). So a setting
a command declares is a keyword argument here at once, and `help(ftprep.mask)` shows them all.

A call runs what the command runs and returns what it made instead of printing it: the dataset
for score, regen and mask (a RunDataset, which carries the run's stats and rejects), the stats
dict, the row's text, the file written... Settings are named the Python way in errors
(`top_k=-1 is out of range`). Editors read the same signatures from ftprep/__init__.pyi, which
ftprep.api_stub writes from this module (tests/test_api_stub.py keeps it up to date).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
import warnings
from dataclasses import MISSING
from typing import Any, Literal

from ftprep.commands import COMMANDS, SUMMARIES, action_arguments
from ftprep.settings import base_type, close_names, spec_of
from ftprep.stages.errors import PYTHON, FtprepError, SettingError

# Python name -> command name, in workflow order: export_config is `ftprep export-config`.
FUNCTIONS = {name.replace("-", "_"): name for name, _, _ in COMMANDS}
MODULES = {name: module for name, module, _ in COMMANDS}
TEMPORARY_OUTPUT_HELP = "Default: a new temporary folder (kept after the call; the dataset returned reads from it)."


def command_named(name: str):
    """The click command of `ftprep NAME` (a SettingsCommand), its module imported now."""
    import importlib

    return importlib.import_module(f"ftprep.commands.{MODULES[name]}").cli


def function(python_name: str):
    """`ftprep.<python_name>`, for the settings its command has now (mask's grow with the strategies registered)."""
    command = command_named(FUNCTIONS[python_name])
    return _function(python_name, command.settings_of())


@functools.cache
def _function(python_name: str, settings_class: type):
    command = command_named(FUNCTIONS[python_name])
    signature = command_signature(command)

    def call(*args, **kwargs):
        return run_call(python_name, command, signature, args, kwargs)

    call.__name__ = call.__qualname__ = python_name
    call.__module__ = "ftprep"
    call.__signature__ = signature
    call.__doc__ = docstring(python_name, command, signature)
    return call


# --- the signature -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One parameter of a function: the setting's field and what the Python API makes of it."""

    item: dataclasses.Field
    hint: Any
    temporary_output: bool = False

    @property
    def spec(self):
        return spec_of(self.item)

    @property
    def default(self):
        if self.temporary_output:
            return None
        return inspect.Parameter.empty if self.item.default is MISSING else self.item.default


def command_fields(command) -> list[Field]:
    """The parameters of a command's function, in order: its arguments, then the options."""
    found = []
    for role, settings_class, offered in command.option_groups():
        hints = typing.get_type_hints(settings_class)
        for item in dataclasses.fields(settings_class):
            if item.name in offered and not spec_of(item).cli_only:
                temporary = command.temporary_output and role == "settings" and item.name == "output"
                found.append(Field(item, hints[item.name], temporary))
    return sorted(found, key=lambda field: not field.spec.argument)  # stable: declared order within each kind


def annotation(field: Field):
    """The type a caller may pass: the setting's, wider where the API converts (paths, datasets)."""
    import datasets

    spec = field.spec
    optional = type(None) in typing.get_args(field.hint) or field.temporary_output
    base = base_type(field.hint)
    if spec.choices is not None:
        base = Literal[tuple(spec.choices)]
    parts = [base]
    if spec.rows:
        parts += [os.PathLike[str], datasets.Dataset, list[dict[str, Any]]]
    elif spec.dataset:
        parts += [os.PathLike[str], datasets.Dataset]
    elif spec.path or "-o" in spec.flags:
        parts.append(os.PathLike[str])
    if optional:
        parts.append(type(None))
    return functools.reduce(lambda left, right: left | right, parts)


def command_signature(command) -> inspect.Signature:
    parameters = []
    for field in command_fields(command):
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if field.spec.argument else inspect.Parameter.KEYWORD_ONLY
        parameters.append(inspect.Parameter(field.item.name, kind, default=field.default, annotation=annotation(field)))
    return inspect.Signature(parameters, return_annotation=return_annotation(command))


def return_annotation(command):
    from ftprep.results import RunDataset

    return typing.get_type_hints(command.python, localns={"RunDataset": RunDataset}).get("return", Any)


def docstring(python_name: str, command, signature: inspect.Signature) -> str:
    returns = inspect.cleandoc(command.python.__doc__ or "")
    lines = [SUMMARIES[command.name], "",
             f"`ftprep {command.name}` as a function: the same settings, checks and files; it returns {lower_first(returns)}",
             "", "Parameters", "----------"]
    names = set(signature.parameters)
    for field in command_fields(command):
        lines += [python_words(line, names) for line in parameter_doc(field)]
    if command.epilog:
        lines += ["", python_words(command.epilog, names)]
    return "\n".join(lines)


def python_words(text: str, names: set[str]) -> str:
    """Help written for the command line, with its flags as this function's keywords: --top-k as top_k=."""
    import re

    def keyword(match: re.Match) -> str:
        name = match[1].replace("-", "_")
        return f"{name}=" if name in names else match[0]

    text = re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)", keyword, text)
    return re.sub(r"(?<![\w-])-o\b", "output=", text) if "output" in names else text


def parameter_doc(field: Field) -> list[str]:
    spec, default = field.spec, field.default
    head = field.item.name if default is inspect.Parameter.empty else f"{field.item.name} (default {default!r})"
    text = spec.help
    if spec.choices is not None:
        text += f" One of: {', '.join(map(str, spec.choices))}."
    if spec.rows:
        text += " Also a list of rows (dicts) or a datasets.Dataset."
    elif spec.dataset:
        text += " Also the dataset an ftprep function returned."
    if field.temporary_output:
        text += " " + TEMPORARY_OUTPUT_HELP
    return [head, f"    {text.strip()}"]


def lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else "what it made."


# --- a call --------------------------------------------------------------------------------


def run_call(python_name: str, command, signature: inspect.Signature, args: tuple, kwargs: dict):
    """Run `ftprep <command>` with these arguments, as the function `python_name` was called."""
    from ftprep.results import RowsRejectedWarning, RunDataset, quiet_datasets
    from ftprep.summary import rejected_line
    from ftprep.verbosity import using

    check_names(python_name, signature, kwargs)
    bound = signature.bind(*args, **kwargs)
    given = set(bound.arguments)  # before the defaults: only what the caller passed
    bound.apply_defaults()
    fields = {field.item.name: field for field in command_fields(command)}
    temporary = None
    try:
        with quiet_datasets():
            values = {name: python_value(value, fields[name], python_name) for name, value in bound.arguments.items()}
        if command.temporary_output and values.get("output") is None:
            import tempfile

            temporary = values["output"] = tempfile.mkdtemp(prefix=f"ftprep-{command.name}-")
        groups, _ = command.split_values(values)
        groups["settings"].check_given(given)
        arguments = {key: value for key, value in action_arguments(groups).items() if key != "json"}
        with using(groups["verbosity"].level()):
            result = command.python(groups["settings"], **arguments)
    except SettingError as error:
        _remove(temporary)
        raise error.named_for(PYTHON) from None  # the caller typed keyword arguments, not flags
    except BaseException:
        _remove(temporary)
        raise
    if isinstance(result, RunDataset) and (line := rejected_line(python_name, result.output, result.stats or {})):
        warnings.warn(line, RowsRejectedWarning, stacklevel=3)
    return result


def check_names(python_name: str, signature: inspect.Signature, kwargs: dict) -> None:
    known = set(signature.parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise FtprepError(f"ftprep.{python_name}() has no option {', '.join(unknown)}{close_names(unknown, known)}: "
                          f"use {', '.join(sorted(known))}")


def _remove(folder: str | None) -> None:
    """A temporary output of a call that failed: nothing of it stays behind."""
    if folder is not None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def python_value(value, field: Field, python_name: str):
    """A value as the command line would have given it: paths as text, datasets as their folders."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, str) or value is None:
        return value
    if field.spec.rows:  # rows of any kind; anything else (12) refused with what it takes
        return rows_path(value)
    if field.spec.dataset:
        return folder_of(value, python_name)
    return value


def rows_path(data) -> str:
    """Rows for the readers: a dataset that ftprep wrote by its folder, other rows saved once
    under a folder named by their fingerprint (the same rows resume the same run)."""
    import datasets

    from ftprep.models import cache_dir

    if isinstance(data, list):
        data = datasets.Dataset.from_list(data)
    if not isinstance(data, datasets.Dataset):
        raise FtprepError(f"cannot read {type(data).__name__}: give a path, a datasets.Dataset or a list of rows")
    folder = written_folder(data)
    if folder is not None:
        return folder
    folder = cache_dir() / "inputs" / data._fingerprint
    if not (folder / "state.json").is_file():
        data.save_to_disk(str(folder))
    return str(folder)


def folder_of(data, python_name: str) -> str:
    folder = written_folder(data)
    if folder is None:
        raise FtprepError(f"ftprep.{python_name}() cannot read {type(data).__name__}: give a dataset that ftprep wrote: what ftprep.score, regen or mask "
                          "returned, or its folder")
    return folder


def written_folder(data) -> str | None:
    """The output folder an ftprep command wrote that `data` was opened from, unchanged since
    (the fingerprint a fresh opening of the folder has, no selection of rows); None for any other."""
    from pathlib import Path

    import datasets

    from ftprep.results import quiet_datasets

    files = getattr(data, "cache_files", None)
    if not isinstance(data, datasets.Dataset) or data._indices is not None or not files:
        return None
    folder = Path(files[0]["filename"]).parent
    if not ((folder / "ftprep.json").is_file() and (folder / "state.json").is_file()):
        return None
    with quiet_datasets():
        fresh = datasets.load_from_disk(str(folder))
    return str(folder) if fresh._fingerprint == data._fingerprint else None
