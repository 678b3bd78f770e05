"""Output folders that `datasets.load_from_disk` opens, written atomically and resumably.

While a run is under way its shards live in OUT/.ftprep-partial/, each committed by a
small JSON file (its rejects and stats) written after the Arrow file. A rerun with the same
settings finds the committed shards and skips them; `finalize` moves the shards into OUT,
writes the `datasets` metadata and ftprep's own files, ftprep.json last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa

from ftprep.run_changes import changed_error
from ftprep.stages.errors import FtprepError

PARTIAL = ".ftprep-partial"
LOCK = ".ftprep-lock"


def _replace_from_temp(path: Path, write) -> None:
    """write(tmp), then rename over `path`; a failed write (a full disk) leaves no temp file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    _replace_from_temp(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_arrow_atomic(path: Path, table: pa.Table) -> None:
    def write(tmp):
        # datasets stores shards in the Arrow IPC stream format.
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1000)

    _replace_from_temp(path, write)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    _replace_from_temp(path, lambda tmp: tmp.write_bytes(data))


def write_parquet_atomic(path: Path, table: pa.Table, row_group_rows: int) -> None:
    import pyarrow.parquet as pq

    _replace_from_temp(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_rows))


def file_record(path: Path) -> dict:
    """What a committed file must still be: its size and SHA-256."""
    with open(path, "rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return {"size": path.stat().st_size, "sha256": digest}


def file_problem(path: Path, record: dict, quick: bool = False) -> str | None:
    """Why `path` is not the file `record` describes (missing, other size, other content); None if it is."""
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size != record.get("size"):
        return f"{path.name} has {path.stat().st_size} bytes, {record.get('size')} were written"
    if not quick and file_record(path)["sha256"] != record.get("sha256"):
        return f"{path.name} does not match its checksum"
    return None


def read_json_file(path: Path, what: str):
    """A JSON file ftprep wrote, or a one-line error where it is damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise FtprepError(f"{path} is damaged ({what} is not valid JSON): rerun the command that wrote it") from error


class OutputLock:
    """One run at a time per output folder: OUT/.ftprep-lock, held with flock while the run
    lasts and naming its process. The kernel drops the lock when the process dies, so a lock
    left by a killed run is simply taken over."""

    def __init__(self, folder: str, lock_name: str = LOCK):
        self.folder = Path(folder)
        self.lock_name = lock_name  # a file output locks FILE's own name in its folder
        self.created = False
        self.handle = None

    def __enter__(self):
        import fcntl

        try:
            self.created = not self.folder.exists()
            self.folder.mkdir(parents=True, exist_ok=True)
            if not self.folder.is_dir():
                raise FtprepError(f"-o {self.folder} is a file, not a folder: choose another -o")
            path = self.folder / self.lock_name
            while True:
                handle = open(path, "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    owner = handle.read().strip() or "another process"
                    handle.close()
                    raise FtprepError(f"{self.folder} is being written by another ftprep run ({owner}): "
                                      "wait for it to end, or choose another -o") from None
                # The file may have been removed by the run that held it just before: lock the one on disk.
                if path.exists() and os.path.samestat(os.fstat(handle.fileno()), path.stat()):
                    break
                handle.close()
        except FileExistsError as error:
            raise FtprepError(f"-o {self.folder}: {error.filename} is a file, not a folder: choose another -o") from error
        except NotADirectoryError as error:
            raise FtprepError(f"-o {self.folder}: a part of that path is a file, not a folder: choose another -o") from error
        except PermissionError as error:
            raise FtprepError(f"cannot write to {self.folder}: permission denied ({error.filename})") from error
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        (self.folder / self.lock_name).unlink(missing_ok=True)
        self.handle.close()
        if self.created and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()  # a run that failed before writing anything leaves nothing behind


def _entries(folder: Path) -> list[Path]:
    """What a folder holds, the lock of the run that writes it aside."""
    return [path for path in folder.iterdir() if path.name != LOCK] if folder.is_dir() else []


def check_output_folder(folder: Path) -> None:
    """-o may be new, empty or an output ftprep wrote (finished or not). A folder holding other
    files is refused, with --overwrite too: ftprep deletes only what it wrote itself."""
    from ftprep.manifest import MANIFEST

    if folder.exists() and not folder.is_dir():
        raise FtprepError(f"-o {folder} is a file, not a folder: choose another -o")
    if _entries(folder) and not (folder / MANIFEST).exists() and not (folder / PARTIAL).exists():
        raise FtprepError(f"{folder} exists and holds files ftprep did not write: choose another -o, or move those files "
                          "out (ftprep never deletes what it did not write, with --overwrite neither)")


class ShardedOutput:
    def __init__(self, folder: str, run_identity: dict, overwrite: bool = False, echo=None):
        self.folder = Path(folder)
        self.partial = self.folder / PARTIAL
        self.identity = json.loads(json.dumps(run_identity, default=_json_default))
        self.complete = False
        manifest, damage = self._finished_output()
        if damage is not None:
            # Made by ftprep, but no longer what it wrote: never reused, made again.
            if echo is not None:
                echo(f"{folder} is damaged ({damage}): writing it again")
            self._clear()
            manifest = None
        if overwrite and not self._resumes_own_partial_run():
            self._clear()
        elif manifest is not None and manifest.run_identity == self.identity:
            self.complete = True
            shutil.rmtree(self.partial, ignore_errors=True)  # left by a run killed at its very end
            return
        elif manifest is not None:
            raise changed_error(f"{folder} holds an ftprep output made with other settings or input", manifest.run_identity,
                                self.identity, "pass --overwrite or choose another -o")
        else:
            check_output_folder(self.folder)
        self.partial.mkdir(parents=True, exist_ok=True)
        run_file = self.partial / "run.json"
        if run_file.is_file() and (unfinished := self._read_run_file(run_file)) != self.identity:
            raise changed_error(f"{folder} holds an unfinished run with other settings or input", unfinished, self.identity,
                                "pass --overwrite to start again")
        write_json_atomic(run_file, self.identity)

    def _finished_output(self):
        """(manifest, None) for a whole finished output or none; (None, why) for a damaged one."""
        from ftprep.manifest import MANIFEST, load_manifest, output_problem

        try:
            manifest = load_manifest(self.folder / MANIFEST)
        except FtprepError:
            return None, f"{MANIFEST} is not valid JSON"
        if manifest is None or manifest.run_identity != self.identity:
            return manifest, None
        return (manifest, None) if (problem := output_problem(self.folder, manifest)) is None else (None, problem)

    def _read_run_file(self, run_file: Path):
        try:
            return json.loads(run_file.read_text())
        except ValueError:
            return None  # damaged: the unfinished run cannot be told apart, start it again

    def _resumes_own_partial_run(self) -> bool:
        """--overwrite rerun after it was killed: it resumes what it started itself."""
        run_file = self.partial / "run.json"
        return run_file.is_file() and self._read_run_file(run_file) == self.identity

    def _clear(self) -> None:
        """Empty the folder, only if ftprep wrote it (ftprep.json or an unfinished run) or it is empty."""

        entries = _entries(self.folder)
        if not entries:
            return
        check_output_folder(self.folder)
        for path in entries:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    def _meta_path(self, shard: int) -> Path:
        return self.partial / f"shard-{shard:05d}.json"

    def _data_path(self, shard: int) -> Path:
        return self.partial / f"shard-{shard:05d}.arrow"

    def has_shard(self, shard: int) -> bool:
        """Whether the shard is committed and intact. A damaged one (its commit record or data
        truncated, garbled or gone) is removed, to be done again."""
        meta_path = self._meta_path(shard)
        if not meta_path.is_file():
            return False
        if self._shard_meta(shard) is not None:
            return True
        meta_path.unlink(missing_ok=True)
        self._data_path(shard).unlink(missing_ok=True)
        return False

    def _shard_meta(self, shard: int) -> dict | None:
        """The shard's commit record, if it and the data it describes are whole."""
        try:
            meta = json.loads(self._meta_path(shard).read_text())
            complete = isinstance(meta, dict) and {"rejects", "stats", "rows"} <= set(meta)
        except (ValueError, UnicodeDecodeError):
            return None
        if not complete:
            return None
        if meta["rows"] and file_problem(self._data_path(shard), meta.get("file", {})) is not None \
                and not self._moved_into_place(meta.get("file", {})):
            return None
        return meta

    def _moved_into_place(self, record: dict) -> bool:
        """A run killed in the middle of `finalize` has moved some shards into OUT already."""
        return any(file_problem(path, record) is None for path in self.folder.glob("data-*-of-*.arrow"))

    def write_shard(self, shard: int, table: pa.Table | None, rejects: list[dict], stats: dict) -> None:
        meta = {"rejects": rejects, "stats": stats, "rows": table.num_rows if table is not None else 0}
        if table is not None and table.num_rows:
            write_arrow_atomic(self._data_path(shard), table)
            meta["file"] = file_record(self._data_path(shard))
        write_json_atomic(self._meta_path(shard), meta)
        from ftprep.verbosity import detail

        detail(f"{self.folder}: shard {shard} committed, {meta['rows']} rows, {len(rejects)} rejected")

    def committed_count(self) -> int:
        """Shards an earlier, unfinished run committed (a resumed run does not do them again)."""
        return len(self._committed_shards()) if self.partial.is_dir() else 0

    def _committed_shards(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.partial.glob("shard-*.json"))

    def shard_metas(self) -> list[dict]:
        return [json.loads(self._meta_path(shard).read_text()) for shard in self._committed_shards()]

    def finalize(self, schema: pa.Schema, manifest, stats: dict) -> None:
        """Move the shards into place and write the metadata. Idempotent: a run killed in the
        middle of it finishes it when rerun, since every step can be done again or skipped.
        The manifest (a RunManifest), written last, records every file's size and checksum."""
        from ftprep.manifest import MANIFEST, FileRecord, write_manifest

        metas = self.shard_metas()
        with_rows = [(shard, meta) for shard, meta in zip(self._committed_shards(), metas) if meta["rows"]]
        sources = [self._data_path(shard) for shard, _ in with_rows]
        records = [meta["file"] for _, meta in with_rows]
        if not sources:  # every row rejected: still a dataset, with no rows
            sources = [self.partial / "shard-empty.arrow"]
            write_arrow_atomic(sources[0], schema.empty_table())
            records = [file_record(sources[0])]
        names = [f"data-{i:05d}-of-{len(sources):05d}.arrow" for i in range(len(sources))]
        for source, name in zip(sources, names):
            if source.exists():
                os.replace(source, self.folder / name)
        rejects = [reject for meta in metas for reject in meta["rejects"]]
        write_dataset_metadata(self.folder, names, pa.ipc.open_stream(self.folder / names[0]).schema)
        write_jsonl_atomic(self.folder / "rejects.jsonl", rejects)
        write_json_atomic(self.folder / "stats.json", stats)
        files = dict(zip(names, records))
        # stats.json holds timings, which differ between runs: it is checked by parsing it, so
        # that the manifest of the same input and settings stays the same.
        for name in ("state.json", "dataset_info.json", "rejects.jsonl"):
            files[name] = file_record(self.folder / name)
        records = {name: FileRecord(**record) for name, record in files.items()}
        write_manifest(self.folder / MANIFEST, dataclasses.replace(manifest, run_identity=self.identity, files=records))
        shutil.rmtree(self.partial)


class FileOutput:
    """An output of single files (hft-plan's plan, iv's vectors), its manifest beside the first
    as FILE.ftprep.json. As ShardedOutput does for a folder: a rerun with the same identity finds
    it complete; a damaged one is written again; one made with other settings, or files ftprep did
    not write, are kept unless --overwrite."""

    def __init__(self, files: list[Path], run_identity: dict, overwrite: bool = False, echo=None):
        from ftprep.manifest import file_manifest_path, files_problem, load_manifest

        self.files = [Path(path) for path in files]
        self.output = self.files[0]
        self.manifest_path = file_manifest_path(self.output)
        self.identity = json.loads(json.dumps(run_identity, default=_json_default))
        self.complete = False
        try:
            self.manifest = load_manifest(self.manifest_path)
        except FtprepError:
            self.manifest, damage = None, f"{self.manifest_path.name} is not valid JSON"
        else:
            damage = None if self.manifest is None else files_problem(self.output.parent, self.manifest.files or {})
        if self.manifest is not None and damage is None and self.manifest.run_identity == self.identity:
            self.complete = True
        elif damage is not None and (self.manifest is None or self.manifest.run_identity == self.identity):
            if echo is not None:  # made by ftprep, but no longer what it wrote: made again
                echo(f"{self.output} is damaged ({damage}): writing it again")
        elif self.manifest is not None and not overwrite:
            raise changed_error(f"{self.output} holds an ftprep output made with other settings or input",
                                self.manifest.run_identity, self.identity, "pass --overwrite or choose another -o")
        elif self.manifest is None and not overwrite and (foreign := [path for path in self.files if path.exists()]):
            raise FtprepError(f"{foreign[0]} exists and is not an ftprep output: choose another -o (or --overwrite)")

    def finalize(self, manifest):
        """Record the files, written by now, with the manifest (a RunManifest), written last."""
        from ftprep.manifest import FileRecord, write_manifest

        folder = self.output.parent
        records = {os.path.relpath(path, folder): FileRecord(**file_record(path)) for path in self.files}
        manifest = dataclasses.replace(manifest, run_identity=self.identity, files=records)
        write_manifest(self.manifest_path, manifest)
        return manifest


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
    """The data files of an output folder, in order, once the folder is checked against its manifest."""
    from ftprep.manifest import open_run

    open_run(folder, missing_ok=True)
    return listed_data_files(folder)


def listed_data_files(folder: Path) -> list[Path]:
    """The data files state.json lists, unchecked."""
    state = Path(folder) / "state.json"
    if not state.is_file():
        raise FtprepError(f"{folder} is not an ftprep output (no state.json): run ftprep score first")
    data = read_json_file(state, "state.json")
    try:
        return [Path(folder) / entry["filename"] for entry in data["_data_files"]]
    except (KeyError, TypeError) as error:
        raise FtprepError(f"{state} is damaged (no list of data files): rerun the command that wrote it") from error


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
