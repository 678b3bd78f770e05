"""`ftprep export`: an output folder as local Parquet files and a dataset card, as `ftprep push` uploads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ftprep.commands import command
from ftprep.commands import common as shared
from ftprep.settings import Settings, setting


@dataclass(frozen=True, kw_only=True)
class ExportSettings(Settings):
    folder: str = shared.folder()
    parquet: str = setting(path=True, metavar="DIR", help="Folder to write: new, empty, or one an earlier export wrote "
                                                          "(its other configs are kept).")
    config_name: str = shared.config_name("DIR")
    license: str | None = shared.license("the card's")


def export(settings: ExportSettings) -> None:
    from ftprep.publish.export import export_parquet

    click.echo(export_parquet(Path(settings.folder), Path(settings.parquet), config_name=settings.config_name,
                              license=settings.license))


cli = command("export", ExportSettings, export)
