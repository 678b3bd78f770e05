"""`ftprep stats`: the numbers of a scored or training dataset."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting
from ftprep.stages.errors import FtprepError


@dataclass(frozen=True, kw_only=True)
class StatsSettings(Settings):
    folder: str = shared.folder("A folder written by ftprep score, regen or mask.")
    json: bool = setting(False, cli_only=True, help="Print stats.json as JSON (for scripts and jq) instead of the table (a scored "
                                     "dataset's with its threshold advice).")


def show_stats(settings: StatsSettings) -> None:
    stats = folder_stats(settings)
    from ftprep.views.stats import format_stats

    click.echo(json.dumps(stats, indent=2) if settings.json else format_stats(stats))


def folder_stats(settings: StatsSettings) -> dict:
    """The folder's stats.json, as a dict."""
    path = Path(settings.folder) / "stats.json"
    if not path.is_file():
        raise FtprepError(f"{settings.folder} has no stats.json: give a folder written by ftprep score or ftprep mask")
    from ftprep.manifest import open_run
    from ftprep.views.stats import scored_stats
    from ftprep.writers import read_json_file

    stats = read_json_file(path, "stats.json")
    if not isinstance(stats, dict):
        raise FtprepError(f"{path} is damaged (not a stats object): rerun the command that wrote it")
    manifest = open_run(Path(settings.folder), missing_ok=True)
    if manifest is not None and manifest.stage == "score":  # its scores advise on the threshold
        stats = scored_stats(Path(settings.folder), stats)
    return stats


cli = command("stats", StatsSettings, show_stats, python=folder_stats,
              writes="Writes nothing: prints FOLDER's stats.json as a table (--json: as JSON).")
