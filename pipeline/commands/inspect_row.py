"""`ftprep inspect`: one row's tokens, masked or low-weight ones marked, and its numbers."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting


@dataclass(frozen=True, kw_only=True)
class InspectSettings(Settings):
    folder: str = shared.folder("A folder written by ftprep score, regen or mask.")
    row: int = setting(0, low=0, help="Row number (0-based).")
    threshold: float = shared.preview_threshold("Scored datasets: mark what ftprep mask --threshold would mask (perplexity above "
                                                                  "this; end-of-turn tokens stay supervised).")
    color: bool | None = setting(None, toggle=True, help="Colour (default: on a terminal, unless NO_COLOR is set).")


def show_row(settings: InspectSettings) -> None:
    from ftprep.views.inspect_row import inspect_row

    use_color = default_color(sys.stdout, os.environ) if settings.color is None else settings.color
    click.echo(inspect_row(Path(settings.folder), settings.row, settings.threshold, use_color), color=use_color)


def default_color(stream, environ) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything but the empty string (no-color.org)."""
    return stream.isatty() and not environ.get("NO_COLOR")


cli = command("inspect", InspectSettings, show_row)
