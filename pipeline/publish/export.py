"""`ftprep export`: an output as local Parquet files and a dataset card, as `ftprep push` lays out a
repo (publish/staging.py), placed in a local folder: no token, no network; `datasets.load_dataset(DIR)`
and `trl sft` read it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ftprep.publish.card import SPLIT, data_dir
from ftprep.publish.staging import check_config_name, checked_source, stage
from ftprep.stages.errors import FtprepError

CARD_MARK = "<!-- ftprep:begin "  # what every card ftprep writes holds: a folder with it is an earlier export


def check_export_folder(folder: Path, target: Path) -> None:
    """`target` may be new, empty, or an earlier export (its other configs are kept); nothing else
    is overwritten."""
    source, destination = folder.resolve(), target.resolve()
    if destination == source or source in destination.parents:
        raise FtprepError(f"--parquet {target} is inside {folder}: give a folder outside it")
    if destination.exists() and not destination.is_dir():
        raise FtprepError(f"--parquet {target} is a file: give a folder")
    if destination.is_dir() and any(destination.iterdir()):
        card = destination / "README.md"
        if not (card.is_file() and CARD_MARK in card.read_text(encoding="utf-8", errors="replace")):
            raise FtprepError(f"--parquet {target} holds other files: give a new or empty folder, or one ftprep export wrote")


def place(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source`, atomically: a hard link where the file system allows
    (the staged files are never rewritten in place, so the link stays a true copy), else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)


def export_parquet(folder: Path, target: Path, *, config_name: str = "default", license: str | None = None) -> str:
    """Write `folder` (from ftprep score or mask) to the local folder `target` as push lays out a repo:
    Parquet files, the dataset card and its image. Returns the line to show last."""
    folder, target = Path(folder), Path(target)
    manifest = checked_source(folder)
    check_config_name(config_name)
    check_export_folder(folder, target)
    card_path = target / "README.md"
    existing_card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    staging, staged, card_files = stage(folder, manifest, config_name, str(target.resolve()), license, existing_card)
    ours = {item.path for item in staged}
    for item in staged:
        place(staging / item.path, target / item.path)
    # Before the card: its data_files pattern would also match an earlier export's shards.
    for stale in (target / data_dir(config_name)).glob(f"{SPLIT}-*.parquet"):
        if stale.relative_to(target).as_posix() not in ours:
            stale.unlink()
    for path in card_files:
        place(staging / path, target / path)
    rows = sum(item.rows for item in staged)
    config = "" if config_name == "default" else f", {config_name!r}"
    return (f"{target}: {len(staged)} Parquet file{'s' if len(staged) != 1 else ''} ({rows} rows) and a dataset card; "
            f"load with datasets.load_dataset({str(target)!r}{config}, split={SPLIT!r})")
