"""What `ftprep push` and `ftprep export` both write first, with no network: each Arrow shard of an
output as one Parquet file in DIR/.ftprep-push/<config>/, laid out as in the repo
(`data/train-00000-of-00003.parquet`), with README.md and the histogram image beside them.
`datasets.load_dataset(staging)` opens it as the Hub will. Staged files are kept: a rerun converts
again only when DIR has changed (then the staging folder starts afresh).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ftprep.manifest import RunManifest, open_run
from ftprep.progress import Progress
from ftprep.publish.card import data_dir, dataset_card, folder_histogram, histogram_png, image_path, parquet_names, threshold_of
from ftprep.stages.errors import FtprepError
from ftprep.writers import dataset_files, read_shards, write_bytes_atomic, write_json_atomic, write_parquet_atomic, write_text_atomic

STAGING = ".ftprep-push"
STAGED_RECORD = ".staged.json"  # which shards the staged files come from, and their row counts
ROW_GROUP_ROWS = 100  # the dataset viewer reads whole row groups to show a page: small ones keep it quick
CONFIG_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*$")


@dataclass
class StagedFile:
    path: str  # the same under the staging folder and in the repo
    rows: int


# Names the default config's files take at the top of the repo: another config named so would
# write into them (config "data" into data/, the default's Parquet files).
RESERVED_CONFIG_NAMES = ("data", "README.md", "ppl_histogram.png", ".gitattributes", STAGING)


def check_config_name(config_name: str) -> None:
    if not CONFIG_NAME.fullmatch(config_name) or config_name in (".", ".."):
        raise FtprepError(f"--config-name {config_name!r}: use letters, digits, '-', '_' or '.' (it names a folder in the repo)")
    if config_name.lower() in (name.lower() for name in RESERVED_CONFIG_NAMES):
        raise FtprepError(f"--config-name {config_name}: that name is taken by the default config's files in the repo; choose another")



def staging_folder(folder: Path, config_name: str) -> Path:
    return Path(folder) / STAGING / config_name


def source_fingerprint(folder: Path, shards: list[Path]) -> str:
    """What the staged Parquet files were made from: a re-masked folder has another run or other shards."""
    manifest = open_run(folder, missing_ok=True)
    identity = manifest.run_identity if manifest is not None else None
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    for shard in shards:
        stat = shard.stat()
        digest.update(f"{shard.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def build_upload_folder(folder: Path, staging: Path, config_name: str = "default") -> list[StagedFile]:
    """Write one Parquet file per Arrow shard of `folder` under `staging`, shard by shard (never the
    whole dataset in memory); files staged from the same shards by an earlier run are kept."""
    shards = dataset_files(folder)
    names = parquet_names(config_name, len(shards))
    source = source_fingerprint(folder, shards)
    record_path = staging / STAGED_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    if record.get("source") != source:
        shutil.rmtree(staging, ignore_errors=True)
        record = {"source": source, "rows": {}}
    (staging / data_dir(config_name)).mkdir(parents=True, exist_ok=True)
    done = {name: rows for name, rows in record["rows"].items() if (staging / name).is_file()}
    manifest = open_run(folder, missing_ok=True)
    progress = Progress("parquet", manifest.rows_out if manifest is not None and manifest.counts else None)
    for name, table in zip(names, read_shards(folder)):
        if name not in done:
            write_parquet_atomic(staging / name, table, ROW_GROUP_ROWS)
            done[name] = table.num_rows
            write_json_atomic(record_path, {"source": source, "rows": done})
        progress.update(table.num_rows)
    progress.close()
    return [StagedFile(name, done[name]) for name in names]


def write_card_files(folder: Path, staging: Path, manifest: RunManifest, repo_id: str, config_name: str,
                     license: str | None, existing_card: str | None) -> list[str]:
    """README.md and the histogram PNG in the staging folder; returns their repo paths."""
    stats = json.loads((folder / "stats.json").read_text())
    histogram = folder_histogram(folder, stats)
    columns = list(json.loads((folder / "dataset_info.json").read_text())["features"])
    card = dataset_card(manifest, stats, histogram, columns, repo_id, config_name, license, existing_card)
    write_text_atomic(staging / "README.md", card)
    (staging / image_path(config_name)).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(staging / image_path(config_name), histogram_png(histogram, threshold_of(manifest)))
    return ["README.md", image_path(config_name)]


def stage(folder: Path, manifest: RunManifest, config_name: str, card_name: str, license: str | None,
          existing_card: str | None) -> tuple[Path, list[StagedFile], list[str]]:
    """The one writer behind push and export: Parquet files, card and image in the staging folder.
    `card_name` is what the card's load_dataset() call opens (a repo id or a local folder)."""
    staging = staging_folder(folder, config_name)
    staged = build_upload_folder(folder, staging, config_name)
    card_files = write_card_files(folder, staging, manifest, card_name, config_name, license, existing_card)
    return staging, staged, card_files


def checked_source(folder: Path) -> RunManifest:
    return open_run(folder, stages=("score", "mask"), refusal=f"{folder} is not an ftprep output (no ftprep.json): "
                    "give a folder from ftprep score or ftprep mask")
