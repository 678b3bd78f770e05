"""How much a command says besides what it is for (a table, JSON, a snippet) and its errors:
-q/--quiet nothing else (no progress, no summary line); by default progress and a summary;
-v/--verbose also what was resolved (model, device, dtype, backend), each shard as it is
committed, and the cause under an error's one line.

The level holds for the command (or Python call) under way: `using(level)` sets it.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import click

from ftprep.settings import Settings, setting
from ftprep.stages.errors import FtprepError

QUIET, NORMAL, VERBOSE = 0, 1, 2
_level = contextvars.ContextVar("ftprep_verbosity", default=NORMAL)


@dataclass(frozen=True, kw_only=True)
class VerbosityOptions(Settings):
    """-q and -v, on every command (and as quiet=, verbose= of every Python function)."""

    quiet: bool = setting(False, flags=("-q", "--quiet"), identity=False,
                          help="Print only errors and what the command is for (tables, JSON, snippets): no progress, no summary line.")
    verbose: bool = setting(False, flags=("-v", "--verbose"), identity=False,
                            help="Also print what was resolved (model, device, dtype, backend), each shard as it is committed, "
                                 "and what caused an error.")

    def level(self) -> int:
        if self.quiet and self.verbose:
            raise FtprepError("-q/--quiet and -v/--verbose ask for opposite things: give one of them")
        return QUIET if self.quiet else VERBOSE if self.verbose else NORMAL


def level() -> int:
    return _level.get()


@contextlib.contextmanager
def using(new_level: int):
    token = _level.set(new_level)
    try:
        yield
    finally:
        _level.reset(token)


def say(message: str, err: bool = False) -> None:
    """A line a user sees unless -q: a summary, what a run found (complete, damaged)."""
    if level() >= NORMAL:
        click.echo(message, err=err)


def detail(message: str) -> None:
    """A line only -v shows, on stderr beside the progress."""
    if level() >= VERBOSE:
        click.echo(message, err=True)
