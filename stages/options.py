"""How a setting is declared, once: a dataclass field whose metadata (a `Spec`) says its help,
range, choices and how it reads on the command line. Stages declare their own settings this
way (a mask strategy its options); the commands take their click options, Python keyword
arguments and checks from the same fields (ftprep.settings).

    @dataclass(frozen=True)
    class Options:
        threshold: float = setting(2.5, low=1, low_open=True, help="Mask tokens above this perplexity.")
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass, field

REQUIRED = MISSING


@dataclass(frozen=True)
class Spec:
    help: str = ""
    flags: tuple[str, ...] = ()  # click's flags; default: --field-name
    choices: tuple | None = None
    low: float | None = None  # numbers: the smallest value allowed
    high: float | None = None
    low_open: bool = False  # low itself is not allowed
    high_open: bool = False
    argument: bool = False  # a positional argument
    toggle: bool = False  # booleans: --x/--no-x instead of a flag that turns it on
    identity: bool = True  # the output depends on it: a resumed run must share it
    path: bool = False  # a file or folder: runs that name it by other paths are the same run
    metavar: str | None = None


def setting(default=REQUIRED, **spec) -> dataclasses.Field:
    """A field of a settings class: its default and how it reads on the command line."""
    return field(default=default, metadata={"spec": Spec(**spec)})


def positive(default=None, **spec) -> dataclasses.Field:
    return setting(default, low=0, low_open=True, **spec)


def spec_of(item: dataclasses.Field) -> Spec:
    return item.metadata.get("spec", Spec())


def default_of(settings_class, name: str):
    """The declared default of one field: where another setting or a view shares it."""
    return next(item.default for item in dataclasses.fields(settings_class) if item.name == name)
