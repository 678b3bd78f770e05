"""Errors a user can fix. The CLI prints them as one line and exits non-zero.

An error about a setting names it by its Python name (`field="top_k"`) and the text refers to
settings through `Setting` values, so that each caller names them its own way: the command line
as `--top-k 20`, the Python API (`ftprep.mask(...)`) as `top_k=20`.

    raise SettingError("{strategy} needs the reference model's top-k: rescore with {rescore}", field="top_k",
                       strategy=Setting("strategy", "anchor"), rescore=Setting("top_k", 20, command="score"))
"""

from __future__ import annotations

from dataclasses import dataclass

UNSET = object()


class FtprepError(Exception):
    """A run-level problem (bad path, unknown model, unknown format): stops the run at once.
    `field`: the setting it is about, by its Python name, where it is about one."""

    def __init__(self, message: str = "", *, field: str | None = None):
        super().__init__(message)
        self.field = field


class RowError(ValueError):
    """A problem with one input row: the row goes to rejects.jsonl with this reason."""


@dataclass(frozen=True)
class Setting:
    """A setting as an error names it: `name` alone (--top-k / top_k=), with a value
    (--top-k 20 / top_k=20), with a placeholder for one (--against SCORED_B / against=SCORED_B),
    or as given to another command (ftprep score --top-k 20 / ftprep.score(..., top_k=20))."""

    name: str
    value: object = UNSET
    command: str | None = None
    metavar: str | None = None


class Naming:
    """How the command line names a setting; subclasses name them another way."""

    def setting(self, setting: Setting) -> str:
        flag = "--" + setting.name.replace("_", "-")
        if setting.metavar is not None:
            text = f"{flag} {setting.metavar}"
        elif setting.value is UNSET:
            text = flag
        elif isinstance(setting.value, bool):
            text = flag if setting.value else f"--no-{flag[2:]}"
        else:
            text = f"{flag} {setting.value}"
        return f"ftprep {setting.command} {text}" if setting.command else text


class PythonNaming(Naming):
    """How the Python API names a setting: as the keyword argument of ftprep.score/regen/mask."""

    def setting(self, setting: Setting) -> str:
        if setting.metavar is not None:
            text = f"{setting.name}={setting.metavar}"
        elif setting.value is UNSET:
            text = f"{setting.name}="
        else:
            text = f"{setting.name}={setting.value!r}"
        return f"ftprep.{setting.command}(..., {text})" if setting.command else text


COMMAND_LINE = Naming()
PYTHON = PythonNaming()


class SettingError(FtprepError):
    """A run-level problem with the setting `field`. `message` is a str.format template; values
    that are `Setting`s are named by `naming` (the command line's by default), the others are
    put in as they are."""

    def __init__(self, message: str, *, field: str, naming: Naming = COMMAND_LINE, **values):
        self.template, self.values, self.naming = message, values, naming
        super().__init__(self.render(naming), field=field)

    def render(self, naming: Naming) -> str:
        return self.template.format(**{key: naming.setting(value) if isinstance(value, Setting) else value
                                       for key, value in self.values.items()})

    def named_for(self, naming: Naming) -> "SettingError":
        """The same error, its settings named as `naming` names them."""
        return SettingError(self.template, field=self.field, naming=naming, **self.values)

    def __reduce__(self):  # pickled between processes (Ray workers) by its parts, not its text
        return _setting_error, (self.template, self.field, self.naming, self.values)


def _setting_error(template: str, field: str, naming: Naming, values: dict) -> SettingError:
    return SettingError(template, field=field, naming=naming, **values)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type where it has none): for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
