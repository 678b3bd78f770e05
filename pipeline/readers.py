"""Open an input source and yield its rows as (source index, dict) pairs.

A row that cannot be parsed is yielded as (index, RowError) so the runner can reject it
and go on; a source that cannot be opened at all raises FtprepError.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator

from pipeline.errors import FtprepError, RowError

SourceRow = tuple[int, "dict | RowError"]
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Source:
    spec: str
    kind: str  # jsonl | json | parquet | csv | disk | hub
    split: str | None = None
    limit: int | None = None

    def rows(self) -> Iterator[SourceRow]:
        rows = _READERS[self.kind](self)
        return islice(rows, self.limit) if self.limit is not None else rows

    def count(self) -> int | None:
        """Number of rows, where it is cheap to know (for progress); None otherwise."""
        if self.kind == "jsonl":
            with open(self.spec, "rb") as handle:
                total = sum(1 for line in handle if line.strip())
        elif self.kind == "parquet":
            import pyarrow.parquet as pq

            total = pq.ParquetFile(self.spec).metadata.num_rows
        else:
            return self.limit
        return min(total, self.limit) if self.limit is not None else total

    def identity(self) -> dict:
        """What identifies this input for resume: a changed file must not resume an old run."""
        path = Path(self.spec)
        if path.is_file():
            stat = path.stat()
            return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            return {"path": str(path.resolve()), "files": [[str(p.relative_to(path)), p.stat().st_size] for p in files]}
        return {"hub": self.spec, "split": self.split}


def open_source(spec: str, split: str | None = None, limit: int | None = None) -> Source:
    path = Path(spec).expanduser()
    if path.is_file():
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None:
            raise FtprepError(f"unknown input type {path.suffix!r}: use .jsonl, .json, .parquet, .csv or a dataset folder")
        return Source(str(path), kind, split, limit)
    if path.is_dir():
        if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise FtprepError(f"{spec} is a folder but not a saved dataset (no state.json): give a file or a save_to_disk folder")
        return Source(str(path), "disk", split, limit)
    if path.exists() or spec.startswith((".", "/", "~")) or path.suffix.lower() in FILE_KINDS or spec.count("/") != 1:
        raise FtprepError(f"input not found: {spec}")
    return Source(spec, "hub", split, limit)


def _read_jsonl(source: Source) -> Iterator[SourceRow]:
    index = 0
    with open(source.spec, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield index, RowError(f"malformed JSON: {exc.msg} at column {exc.colno}")
            else:
                yield index, row if isinstance(row, dict) else RowError("line is not a JSON object")
            index += 1


def _read_json(source: Source) -> Iterator[SourceRow]:
    try:
        with open(source.spec, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise FtprepError(f"{source.spec} is not valid JSON ({exc.msg}, line {exc.lineno}); for one object per line use .jsonl") from exc
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: a single list inside
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise FtprepError(f"{source.spec} must hold a JSON array of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise FtprepError(f"{source.spec} must hold a JSON array of rows")
    for index, row in enumerate(data):
        yield index, row if isinstance(row, dict) else RowError("row is not a JSON object")


def _read_csv(source: Source) -> Iterator[SourceRow]:
    csv.field_size_limit(sys.maxsize)
    with open(source.spec, newline="", encoding="utf-8", errors="replace") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if None in row:
                yield index, RowError("CSV row has more fields than the header")
            else:
                yield index, row


def _read_parquet(source: Source) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source.spec)
    except Exception as exc:
        raise FtprepError(f"cannot read {source.spec} as Parquet: {exc}") from exc
    return _enumerate_batches(parquet.iter_batches(batch_size=1024))


def _read_disk(source: Source) -> Iterator[SourceRow]:
    import datasets

    loaded = datasets.load_from_disk(source.spec)
    return _enumerate_batches(_pick_split(loaded, source).data.to_batches(max_chunksize=1024))


def _read_hub(source: Source) -> Iterator[SourceRow]:
    import datasets

    from pipeline.models import hub_reachable

    online = hub_reachable()
    if not online:
        datasets.config.HF_HUB_OFFLINE = True  # the local cache only, without a minute of retries
    try:
        loaded = datasets.load_dataset(source.spec, split=source.split)
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not online:
            message = "the Hub cannot be reached and it is not in the local cache"
        raise FtprepError(f"cannot load the hub dataset {source.spec}: {message}") from exc
    return _enumerate_batches(_pick_split(loaded, source).data.to_batches(max_chunksize=1024))


def _pick_split(loaded, source: Source):
    if not hasattr(loaded, "keys"):
        return loaded
    split = source.split or ("train" if "train" in loaded else None)
    if split not in loaded:
        raise FtprepError(f"{source.spec} has splits {sorted(loaded)}: choose one with --split")
    return loaded[split]


def _enumerate_batches(batches) -> Iterator[SourceRow]:
    index = 0
    for batch in batches:
        for row in batch.to_pylist():
            yield index, row
            index += 1


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "disk": _read_disk,
    "hub": _read_hub,
}
