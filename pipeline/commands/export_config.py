"""`ftprep export-config`: a ready-to-use training snippet for a training folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting
from ftprep.stages.strategies import TARGETS


@dataclass(frozen=True, kw_only=True)
class ExportConfigSettings(Settings):
    folder: str = shared.folder("A folder written by ftprep mask.")
    target: str = setting("trl", choices=TARGETS, help="Trainer to print a snippet for (hf and trl print the same TRL Python).")
    base_model: str | None = setting(None, help="Model the snippet trains: a hub id or a local folder (default: the model that "
                                           "scored: the hub id or folder --model named; for the embedded alias or a .gguf "
                                           "file, ftprep's dense copy of it).")


def print_snippet(settings: ExportConfigSettings) -> None:
    from ftprep.publish.export_config import export_config

    click.echo(export_config(Path(settings.folder), settings.target, settings.base_model), nl=False)


cli = command("export-config", ExportConfigSettings, print_snippet)
