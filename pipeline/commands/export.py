"""`ftprep export`: an output folder as local Parquet files and a dataset card, as `ftprep push` uploads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    from ftprep.verbosity import say

    say(export_parquet(Path(settings.folder), Path(settings.parquet), config_name=settings.config_name, license=settings.license))


def export_folder(settings: ExportSettings) -> Path:
    """The folder it wrote (--parquet), which datasets.load_dataset(folder) opens."""
    from ftprep.publish.export import export_parquet

    export_parquet(Path(settings.folder), Path(settings.parquet), config_name=settings.config_name, license=settings.license)
    return Path(settings.parquet)


cli = command("export", ExportSettings, export, python=export_folder,
              writes="Writes DIR (--parquet): README.md (the dataset card, with the config), the config's Parquet files under "
                     "data/ (another config's under its name), the perplexity histogram image, and .ftprep-push/ (the staged "
                     "files a rerun reuses).")
