"""Output folders that `datasets.load_from_disk` opens, written atomically and resumably.

While a run is under way its shards live in OUT/.ftprep-partial/, each committed by a
small JSON file (its rejects and stats) written after the Arrow file. A rerun with the same
settings finds the committed shards and skips them; `finalize` moves the shards into OUT,
writes the `datasets` metadata and ftprep's own files, ftprep.json last.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa

from ftprep.stages.errors import FtprepError

PARTIAL = ".ftprep-partial"
MANIFEST = "ftprep.json"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_arrow_atomic(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # datasets stores shards in the Arrow IPC stream format.
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1000)
    os.replace(tmp, path)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_parquet_atomic(path: Path, table: pa.Table, row_group_rows: int) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_rows)
    os.replace(tmp, path)


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


class ShardedOutput:
    def __init__(self, folder: str, run_identity: dict, overwrite: bool = False):
        self.folder = Path(folder)
        self.partial = self.folder / PARTIAL
        self.identity = run_identity
        manifest = read_manifest(self.folder)
        if overwrite:
            self._clear()
        elif manifest is not None and manifest.get("run_identity") == run_identity:
            self.complete = True
            shutil.rmtree(self.partial, ignore_errors=True)  # left by a run killed at its very end
            return
        elif manifest is not None:
            raise FtprepError(f"{folder} holds an ftprep output made with other settings: pass --overwrite or choose another -o")
        elif self.folder.exists() and not self.partial.exists() and any(self.folder.iterdir()):
            raise FtprepError(f"{folder} exists and is not an ftprep output: choose another -o (or --overwrite)")
        self.complete = False
        self.partial.mkdir(parents=True, exist_ok=True)
        run_file = self.partial / "run.json"
        if run_file.is_file() and json.loads(run_file.read_text()) != json.loads(json.dumps(run_identity, default=_json_default)):
            raise FtprepError(f"{folder} holds an unfinished run with other settings: pass --overwrite to start again")
        write_json_atomic(run_file, run_identity)

    def _clear(self) -> None:
        if not self.folder.exists():
            return
        if read_manifest(self.folder) is None and not (self.folder / PARTIAL).exists() and any(self.folder.iterdir()):
            raise FtprepError(f"{self.folder} exists and is not an ftprep output: refusing to overwrite it")
        shutil.rmtree(self.folder)

    def _meta_path(self, shard: int) -> Path:
        return self.partial / f"shard-{shard:05d}.json"

    def _data_path(self, shard: int) -> Path:
        return self.partial / f"shard-{shard:05d}.arrow"

    def has_shard(self, shard: int) -> bool:
        return self._meta_path(shard).is_file()

    def write_shard(self, shard: int, table: pa.Table | None, rejects: list[dict], stats: dict) -> None:
        if table is not None and table.num_rows:
            write_arrow_atomic(self._data_path(shard), table)
        write_json_atomic(self._meta_path(shard), {"rejects": rejects, "stats": stats, "rows": table.num_rows if table is not None else 0})

    def _committed_shards(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.partial.glob("shard-*.json"))

    def shard_metas(self) -> list[dict]:
        return [json.loads(self._meta_path(shard).read_text()) for shard in self._committed_shards()]

    def finalize(self, schema: pa.Schema, manifest: dict, stats: dict) -> None:
        """Move the shards into place and write the metadata. Idempotent: a run killed in the
        middle of it finishes it when rerun, since every step can be done again or skipped."""
        metas = self.shard_metas()
        with_rows = [shard for shard, meta in zip(self._committed_shards(), metas) if meta["rows"]]
        sources = [self._data_path(shard) for shard in with_rows]
        if not sources:  # every row rejected: still a dataset, with no rows
            sources = [self.partial / "shard-empty.arrow"]
            write_arrow_atomic(sources[0], schema.empty_table())
        names = [f"data-{i:05d}-of-{len(sources):05d}.arrow" for i in range(len(sources))]
        for source, name in zip(sources, names):
            if source.exists():
                os.replace(source, self.folder / name)
        rejects = [reject for meta in metas for reject in meta["rejects"]]
        write_dataset_metadata(self.folder, names, pa.ipc.open_stream(self.folder / names[0]).schema)
        write_jsonl_atomic(self.folder / "rejects.jsonl", rejects)
        write_json_atomic(self.folder / "stats.json", stats)
        write_json_atomic(self.folder / MANIFEST, {**manifest, "run_identity": self.identity})
        shutil.rmtree(self.partial)


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_dataset_metadata(folder: Path, data_files: list[str], schema: pa.Schema) -> None:
    """state.json and dataset_info.json exactly as `Dataset.save_to_disk` writes them."""
    from datasets import Features

    features = Features.from_arrow_schema(schema)
    write_json_atomic(folder / "dataset_info.json", {
        "citation": "", "description": "", "features": features.to_dict(), "homepage": "", "license": "",
    })
    write_json_atomic(folder / "state.json", {
        "_data_files": [{"filename": name} for name in data_files],
        "_fingerprint": _fingerprint(folder, data_files),
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    })


def dataset_files(folder: Path) -> list[Path]:
    state = Path(folder) / "state.json"
    if not state.is_file():
        raise FtprepError(f"{folder} is not an ftprep output (no state.json): run ftprep score first")
    return [Path(folder) / entry["filename"] for entry in json.loads(state.read_text())["_data_files"]]


def read_arrow(path) -> pa.Table:
    """One Arrow file as `datasets` writes them (IPC stream format), memory-mapped: no copy."""
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_stream(source).read_all()


def read_shards(folder: Path):
    """Yield each shard of an output folder as one Arrow table, in order."""
    for path in dataset_files(folder):
        yield read_arrow(path)


def merge_counters(dicts: list[dict]) -> dict:
    """Add up numbers key by key, recursing into nested dicts (reject reasons, histograms)."""
    total: dict = {}
    for item in dicts:
        for key, value in item.items():
            if isinstance(value, dict):
                total[key] = merge_counters([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total


def _fingerprint(folder: Path, data_files: list[str]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in data_files:
        digest.update(f"{name}:{(folder / name).stat().st_size}".encode())
    return digest.hexdigest()[:16]


def _json_default(value):
    if isinstance(value, Counter):
        return dict(value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
