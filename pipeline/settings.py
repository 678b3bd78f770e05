"""Settings declared once: each command's dataclass of settings is its click options, its
Python keyword arguments, its validation and the `config` of its manifest.

    @dataclass(frozen=True, kw_only=True)
    class ScoreSettings(Settings):
        input: str = INPUT()
        top_k: int = setting(0, help="Also store the top-k.", low=0, high=1000)

A field's `Spec` (its metadata, declared with ftprep.stages.options, where the stages declare
their own settings too) says how it reads on the command line; `Settings.__post_init__` checks
choices and ranges, so `ftprep.mask(..., strategy="thresold")` fails with a one-line error, which
names the setting as the caller wrote it (`strategy='thresold'`; `--strategy thresold` on the
command line).

A choice is spelled with hyphens (`prompt-completion`, `llama-factory`); the same word with
underscores is accepted as its alias and read as the hyphenated one.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import MISSING
from pathlib import Path

import click

from ftprep.stages.errors import Setting, SettingError
from ftprep.stages.options import REQUIRED, Spec, canonical_choice, positive, setting, spec_of

__all__ = ["REQUIRED", "Settings", "Spec", "check_value", "click_params", "option_name", "positive", "setting", "spec_of"]


class Settings:
    """What every command's settings can say about themselves."""

    def __post_init__(self):
        for item in dataclasses.fields(self):
            value = canonical_choice(getattr(self, item.name), spec_of(item).choices)
            object.__setattr__(self, item.name, value)  # an alias's value is stored as its choice
            check_value(item.name, value, spec_of(item))

    def check_given(self, given: set[str]) -> None:
        """Rules on the settings the user gave, as opposed to those left at their defaults (`given`:
        their names, from the command line or the Python API's keywords); none by default."""

    def to_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if spec_of(item).identity}

    def result_settings(self) -> dict:
        """Settings that change the output; a resumed run must share all of them. Paths count
        by what they name, so `./data.jsonl` resumes a run of `data.jsonl`, from any directory."""
        settings = self.to_dict()
        settings.pop("output", None)
        for item in dataclasses.fields(self):
            value = settings.get(item.name)
            if spec_of(item).path and isinstance(value, str) and Path(value).expanduser().exists():
                settings[item.name] = str(Path(value).expanduser().resolve())
        return settings


def close_names(unknown: list[str], known) -> str:
    """", did you mean threshold?" for a name one typo away from a known one."""
    import difflib

    guesses = [match for name in unknown for match in difflib.get_close_matches(name, known, n=1)]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def option_name(item: dataclasses.Field) -> str:
    spec = spec_of(item)
    if spec.argument:
        return item.name.upper()
    long_flags = [flag for flag in spec.flags if flag.startswith("--")]
    return long_flags[0].split("/")[0] if long_flags else "--" + item.name.replace("_", "-")


def check_value(field: str, value, spec: Spec) -> None:
    """The value of the setting `field` against its declaration: a SettingError, which the
    command line shows as `--top-k -1` and the Python API as `top_k=-1`."""
    if value is None:
        return
    given = Setting(field, value)
    if spec.choices is not None and value not in spec.choices:
        raise SettingError("unknown {given}: use one of {choices}", field=field, given=given,
                           choices=", ".join(map(str, spec.choices)))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingError("{given}: give a finite number", field=field, given=given)
    if spec.low is None and spec.high is None:
        return
    below = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
    above = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
    if below or above:
        raise SettingError("{given} is out of range: {allowed}", field=field, given=given, allowed=range_text(spec))


def range_text(spec: Spec) -> str:
    parts = []
    if spec.low is not None:
        parts.append(f"above {spec.low:g}" if spec.low_open else f"at least {spec.low:g}")
    if spec.high is not None:
        parts.append(f"below {spec.high:g}" if spec.high_open else f"at most {spec.high:g}")
    return "give a value " + " and ".join(parts)


def click_params(cls) -> list[click.Parameter]:
    """The click arguments and options of a Settings class, in the order of its fields."""
    hints = typing.get_type_hints(cls)
    return [click_param(item, hints[item.name]) for item in dataclasses.fields(cls)]


def click_param(item: dataclasses.Field, hint) -> click.Parameter:
    spec = spec_of(item)
    kind = base_type(hint)
    required = item.default is MISSING and item.default_factory is MISSING
    default = None if required else item.default
    if spec.argument:
        return click.Argument([item.name], required=required, type=click_type(spec, kind))
    flags = list(spec.flags) or ["--" + item.name.replace("_", "-")]
    if kind is bool:
        if spec.toggle:
            flags = flags if "/" in flags[-1] else [f"{flags[0]}/--no-{flags[0][2:]}"]
            return click.Option([*flags, item.name], default=default, help=spec.help, show_default=default is not None)
        return click.Option([*flags, item.name], is_flag=True, default=bool(default), help=spec.help)
    # A required option gets no default at all: click 8.5 takes an explicit default=None as a value.
    default_kwargs = {} if required else {"default": default}
    return click.Option([*flags, item.name], type=click_type(spec, kind), required=required, help=spec.help,
                        metavar=spec.metavar, show_default=default is not None, **default_kwargs)


class SpelledChoice(click.Choice):
    """A click.Choice that also takes a choice's underscore spelling (prompt_completion) as its
    alias; --help and shell completion show the hyphenated choices only."""

    def convert(self, value, param, ctx):
        return super().convert(canonical_choice(value, tuple(self.choices)), param, ctx)


def click_type(spec: Spec, kind):
    if spec.choices is not None:
        return SpelledChoice([str(choice) for choice in spec.choices])
    if kind is int and (spec.low is not None or spec.high is not None):
        return click.IntRange(_closed(spec.low, spec.low_open, 1), _closed(spec.high, spec.high_open, -1))
    if kind is float and (spec.low is not None or spec.high is not None):
        return click.FloatRange(spec.low, spec.high, min_open=spec.low_open, max_open=spec.high_open)
    if spec.path:
        return click.Path()
    return {int: click.INT, float: click.FLOAT}.get(kind, click.STRING)


def _closed(bound, is_open: bool, step: int):
    """An integer range's open bound as a closed one (IntRange(0, min_open) takes 1 and up)."""
    if bound is None:
        return None
    return int(bound) + step if is_open else int(bound)


def base_type(hint):
    """int for `int | None`, and so on."""
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if args else hint
