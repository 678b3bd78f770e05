"""`ftprep export-config`: a ready-to-use training snippet for a training folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting
from ftprep.stages.errors import FtprepError
from ftprep.stages.strategies import TARGETS


@dataclass(frozen=True, kw_only=True)
class ExportConfigSettings(Settings):
    folder: str = shared.folder("A folder written by ftprep mask.")
    target: str = setting("trl", choices=TARGETS, help="Trainer to print a snippet for (hf and trl print the same TRL Python).")
    base_model: str | None = setting(None, help="Model the snippet trains: a hub id or a local folder (default: the model that "
                                           "scored: the hub id or folder --model named; for the embedded alias or a .gguf "
                                           "file, ftprep's dense copy of it).")
    output: str | None = shared.output("File to write the snippet to (e.g. train.py or axolotl.yaml) instead of printing it.",
                                       default=None)


def print_snippet(settings: ExportConfigSettings, overwrite: bool) -> None:
    text = snippet(settings, overwrite)
    if settings.output is None:
        click.echo(text, nl=False)
    else:
        from ftprep.verbosity import say

        say(f"wrote {settings.output}")


def snippet(settings: ExportConfigSettings, overwrite: bool = False) -> str:
    """The snippet (also written to output= where given)."""
    from ftprep.publish.export_config import export_config

    if settings.output is not None:
        check_snippet_file(Path(settings.output), overwrite)
    text = export_config(Path(settings.folder), settings.target, settings.base_model)
    if settings.output is not None:
        from ftprep.writers import write_text_atomic

        write_text_atomic(Path(settings.output), text)
    return text


def check_snippet_file(path: Path, overwrite: bool) -> None:
    """-o is a new file in a folder that exists; an existing one is replaced only with --overwrite."""
    if path.is_dir():
        raise FtprepError(f"-o {path} is a folder: give the file to write, e.g. {path / 'train.py'}")
    if not path.parent.is_dir():
        raise FtprepError(f"-o {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise FtprepError(f"-o {path} exists: pass --overwrite to replace it, or choose another -o")


cli = command("export-config", ExportConfigSettings, print_snippet, overwrite=True, python=snippet,
              writes="Writes nothing unless -o FILE: prints the snippet (with -o, writes it to FILE).")
