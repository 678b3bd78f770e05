"""Open an input source and yield its rows as (source index, dict) pairs.

A row that cannot be parsed is yielded as (index, RowError) so the runner can reject it
and go on; a source that cannot be opened at all raises FtprepError.

`Source.rows()` reads the rows in one pass (the local engine). `Source.shard_reads()` says
where each shard's rows are, so that other processes or machines (the Ray engine) read
them; `read_shard` gives exactly the rows one pass would have put in that shard.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa

from ftprep.damage import KIND_NAMES, check_dataset_folder, check_file, reading, unreadable
from ftprep.stages.errors import FtprepError, RowError
from ftprep.stages.errors import first_line as _first_line
from ftprep.stages.normalize import SOURCE_SCHEMA

SourceRow = tuple[int, "dict | RowError"]
FILE_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSED = (".gz", ".zst", ".bz2", ".xz", ".zip", ".7z")
# Names that are files, never hub dataset ids (user/name): a missing one is a wrong path.
FILE_SUFFIXES = (*FILE_KINDS, *COMPRESSED, ".arrow", ".txt", ".tsv")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Source:
    spec: str
    kind: str  # jsonl | json | parquet | csv | disk | hub
    split: str | None = None
    limit: int | None = None

    def rows(self) -> Iterator[SourceRow]:
        rows = _guarded(self.spec, self.kind, lambda: _READERS[self.kind](self))
        return islice(rows, self.limit) if self.limit is not None else rows

    def shard_reads(self, shard_rows: int, seekable: bool = True) -> Iterator["ShardRead"]:
        """Each shard of `shard_rows` rows, in order, as a ShardRead.

        seekable: where the format lets another process seek to a shard, say only where it is
        (JSON Lines by byte offset, Parquet and dataset folders by row), so the rows are read
        by whoever processes the shard. Otherwise (and always for JSON and CSV) the rows are
        read here, in one pass, and travel inside their ShardRead."""
        if seekable and self.kind == "jsonl":
            return _guarded(self.spec, self.kind, lambda: _jsonl_shard_reads(self, shard_rows))
        if seekable and self.kind in ("parquet", "disk", "hub"):
            return _guarded(self.spec, self.kind, lambda: _table_shard_reads(self, shard_rows))
        return (ShardRead(shard, self.kind, self.spec, chunk[0][0], len(chunk), rows=chunk)
                for shard, chunk in enumerate(_batched(self.rows(), shard_rows)))

    def count(self) -> int | None:
        """Number of rows the run reads, for progress: never more than the input holds, so that
        --limit 8 on 3 rows ends at 3/3. None where counting would cost a pass of its own (JSON
        and CSV without a limit)."""
        if self.kind == "jsonl":
            with open(self.spec, "rb") as handle:
                total = sum(1 for line in _lines(handle) if not _is_blank(line))
        elif self.kind == "parquet":
            total = _open_parquet(self.spec).metadata.num_rows
        elif self.kind in ("disk", "hub"):
            total = _load_dataset(self).num_rows  # memory-mapped (and cached, for the hub): no rows read
        elif self.limit is not None:  # json, csv: the rows up to the limit, which a run reads anyway
            return sum(1 for _ in self.rows())
        else:
            return None
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
    """The input `spec` names, once what can be checked without reading its rows is checked:
    a file's first bytes (is it the kind its suffix says?), a dataset folder's own files."""
    path = Path(spec).expanduser()
    if path.is_file():
        kind = FILE_KINDS.get(path.suffix.lower())
        if kind is None and path.suffix.lower() in COMPRESSED:
            raise FtprepError(f"{spec} is compressed ({path.suffix}): decompress it first, and give the .jsonl, .json, .csv "
                              "or .parquet file")
        if kind is None:
            raise FtprepError(f"unknown input type {path.suffix!r}: use .jsonl, .json, .parquet, .csv or a dataset folder")
        if split is not None:  # a file has one split: a --split that changes nothing is a mistake to say
            raise FtprepError(f"--split {split}: {spec} is a file, which has no splits; --split is for dataset folders and hub datasets")
        check_file(path, kind)
        if kind == "parquet":
            _open_parquet(str(path))  # its footer: the schema and row groups, no rows
        return Source(str(path), kind, split, limit)
    if path.is_dir():
        if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise FtprepError(f"{spec} is a folder but not a saved dataset (no state.json): give a file or a save_to_disk folder")
        check_dataset_folder(path)
        return Source(str(path), "disk", split, limit)
    if path.exists():
        raise FtprepError(f"{spec} is neither a file nor a folder: give a .jsonl, .json, .parquet or .csv file or a dataset folder")
    if spec.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES or not HUB_ID.fullmatch(spec):
        raise FtprepError(f"input not found: {spec}")
    owner, name = spec.split("/")
    if Path(owner).is_dir():  # out/scored, a folder not written yet: a local path, not the hub dataset of a user "out"
        raise FtprepError(f"input not found: {spec} ({owner}/ is a local folder, and it holds no {name})")
    return Source(spec, "hub", split, limit)


@dataclass(frozen=True)
class ShardRead:
    """One shard's rows: where they are, or (JSON, CSV) the rows themselves."""

    shard: int
    kind: str
    path: str
    first_index: int  # source index of the shard's first row
    count: int
    offset: int = 0  # jsonl: byte offset of the first row's line
    first_line: int = 1  # jsonl: that line's number in the file (1-based), which reasons name
    files: tuple[str, ...] = ()  # disk, hub: the dataset's Arrow files, rows counted across them
    rows: list | None = None  # json, csv: the rows, read by the process that planned the shards


def read_shard(read: ShardRead) -> list[SourceRow]:
    """The (source index, row) pairs of one shard, in any process that sees read.path."""
    if read.rows is not None:
        return read.rows
    with reading(read.path, read.kind):
        return _read_shard_rows(read)


def _read_shard_rows(read: ShardRead) -> list[SourceRow]:
    missing = [path for path in (read.files or (read.path,)) if not Path(path).exists()]
    if missing:
        import platform

        raise FtprepError(f"{missing[0]} is not visible on {platform.node()}: every node must see the input at the "
                          "same path (a shared file system)")
    if read.kind == "jsonl":
        with open(read.path, "rb") as handle:
            handle.seek(read.offset)
            return list(islice(_jsonl_rows(handle, read.first_index, read.first_line), read.count))
    if read.kind == "parquet":
        return list(islice(_parquet_rows_from(read.path, read.first_index), read.count))
    table = _arrow_files_table(read.files).slice(read.first_index, read.count)
    return list(_enumerate_batches(table.to_batches(max_chunksize=1024), read.first_index))


FORMAT_SAMPLE_ROWS = 100


def rows_and_format(source: Source, fmt: str | None):
    """The source's rows and their format (detected from the first rows unless given)."""
    from ftprep.stages.normalize import detect_format

    rows = source.rows()
    sample = list(islice(rows, FORMAT_SAMPLE_ROWS))
    if not sample:
        raise FtprepError(f"{source.spec} has no rows")
    readable = [row for _, row in sample if isinstance(row, dict)]
    if not readable and fmt is None:  # nothing to tell a format from: say why, not which columns are missing
        raise FtprepError(f"none of the first {len(sample)} rows of {source.spec} can be read (row {sample[0][0]}: "
                          f"{sample[0][1]}): check that it is {KIND_NAMES[source.kind]}{READABLE_HINTS.get(source.kind, '')}")
    fmt = fmt or detect_format(readable, source.spec)
    return chain(sample, rows), fmt


READABLE_HINTS = {"jsonl": ", one JSON object per line (a JSON array goes in a .json file)",
                  "json": ", an array of JSON objects"}


def input_format(source: Source, fmt: str | None) -> str:
    """The input's format, detected from its first rows unless given; an empty input is an error."""
    return rows_and_format(source, fmt)[1]


def checked_format(source: Source, fmt: str | None, first_rows: int) -> str:
    """input_format, and a --format given that reads none of the first `first_rows` rows (the
    first shard) refused: checked before any model loads, so that it costs a moment and leaves
    no output behind."""
    from ftprep.stages import Rejects
    from ftprep.stages.errors import Setting, SettingError
    from ftprep.stages.normalize import NormalizeStage, format_columns_text

    rows, found = rows_and_format(source, fmt)
    if fmt is None:
        return found
    first = list(islice(rows, first_rows))
    rejects = Rejects()
    if NormalizeStage(fmt)(source_table(first), rejects)[0].num_rows:
        return fmt
    reasons = sorted(rejects.reasons().items(), key=lambda item: -item[1])
    why = "; ".join(f"{count} {reason}" for reason, count in reasons[:3])
    found = fitting_format([row for _, row in first if isinstance(row, dict)])
    if found is None:
        hint, values = "give rows with the columns of one format ({needs})", {"needs": format_columns_text()}
    else:
        hint, values = "the rows look like {found}: pass {fits}, or leave {format} out", {
            "found": found, "fits": Setting("format", found), "format": Setting("format")}
    raise SettingError("{given} reads none of the first {rows} rows of {spec} ({why}): " + hint, field="format",
                       given=Setting("format", fmt), rows=len(first), spec=source.spec, why=why, **values)


def fitting_format(rows: list[dict]) -> str | None:
    """The format these rows have the columns of, if any."""
    from ftprep.stages.normalize import detect_format

    try:
        return detect_format(rows)
    except FtprepError:
        return None


def source_table(rows: list[SourceRow]) -> pa.Table:
    """Source rows as the normalize stage takes them: index, the row as JSON text, or why it
    could not be read."""
    indices, texts, errors = [], [], []
    for index, row in rows:
        indices.append(index)
        if not isinstance(row, RowError):
            try:
                texts.append(row_text(row))
                errors.append(None)
                continue
            except RowError as error:
                row = error
        texts.append(None)
        errors.append(str(row))
    return pa.table([pa.array(indices, pa.int64()), pa.array(texts, pa.large_string()), pa.array(errors, pa.string())],
                    schema=SOURCE_SCHEMA)


def row_text(row: dict) -> str:
    """A row as JSON text, or RowError where it is no valid UTF-8 text (a lone surrogate such as
    "\\ud800", which JSON's escapes allow) or too deeply nested to write back."""
    try:
        text = json.dumps(row, ensure_ascii=False, default=str)
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = error.object[error.start : error.end].encode("unicode_escape").decode("ascii")
        raise RowError(f"text is not valid Unicode: it holds the lone surrogate {bad}") from None
    except (RecursionError, ValueError) as error:
        raise RowError(f"row cannot be stored: {_first_line(error)}") from None
    return text


def read_source_shard(read: ShardRead) -> pa.Table:
    """One shard of source rows as a table (read_shard's rows, as source_table lays them out)."""
    return source_table(read_shard(read))


def _absolute(path: str) -> str:
    """Paths that other processes read: a Ray worker does not share this one's working directory."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def _guarded(spec: str, kind: str, make: Callable[[], Iterator]) -> Iterator:
    """The items `make()` yields, made and read inside `reading`: damage found on the way, at
    the first row or a later shard's, ends the run with one line about the file."""
    with reading(spec, kind):
        yield from make()


def _batched(iterable, size: int):
    iterator = iter(iterable)
    while chunk := list(islice(iterator, size)):
        yield chunk


BOM = "\ufeff"
LONE_CR = re.compile(rb"\r(?!\n|$)")


def _decode(raw: bytes) -> str:
    # A byte-order mark starts a file saved by some editors; it is not part of the first row.
    return raw.decode("utf-8", errors="replace").removeprefix(BOM)


def _is_blank(raw: bytes) -> bool:
    return not _decode(raw).strip()


def _lines(handle) -> Iterator[bytes]:
    """The file's lines as bytes, ended by LF, CRLF or a lone CR (old Mac files). JSON text
    holds no raw CR, so splitting there never cuts a row; the pieces' lengths add up to the
    bytes read, so byte offsets stay exact for a shard's reader that seeks."""
    for raw in handle:
        if b"\r" not in raw[:-2]:
            yield raw
            continue
        start = 0
        for match in LONE_CR.finditer(raw):
            yield raw[start : match.end()]
            start = match.end()
        yield raw[start:]


def _read_jsonl(source: Source) -> Iterator[SourceRow]:
    with open(source.spec, "rb") as handle:
        yield from _jsonl_rows(handle, 0)


def _jsonl_rows(handle, first_index: int, first_line: int = 1) -> Iterator[SourceRow]:
    # Bytes, decoded line by line: a shard's reader seeks to a byte offset, and both readers
    # must split lines and skip blank ones alike.
    index = first_index
    for line_number, raw in enumerate(_lines(handle), start=first_line):
        if _is_blank(raw):
            continue
        yield index, parse_json_line(_decode(raw), line_number)
        index += 1


def parse_json_line(line: str, line_number: int = 1) -> "dict | RowError":
    """One JSON Lines row, or why it is not one; `line_number`: its line in the file."""
    try:
        # Without its line end: the decoder would place an error at the end of the row on the next line.
        row = json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as exc:
        # The column as Python's json reports it for the line, the line as an editor numbers it;
        # the decoder's own message may end in "at" ("Invalid control character at").
        return RowError(f"malformed JSON: {exc.msg.removesuffix(' at')} at line {line_number + exc.lineno - 1} column {exc.colno}")
    except RecursionError:
        return RowError("malformed JSON: nested too deeply to read")
    except ValueError:  # an integer with more digits than Python converts
        return RowError(f"malformed JSON: a number longer than {sys.get_int_max_str_digits()} digits")
    return row if isinstance(row, dict) else RowError("line is not a JSON object")


def _jsonl_shard_reads(source: Source, shard_rows: int) -> Iterator[ShardRead]:
    """One pass over the bytes, parsing nothing: where every shard's first line starts."""
    total = source.limit
    starts, index, offset = [], 0, 0
    with open(source.spec, "rb") as handle:
        for line_number, raw in enumerate(_lines(handle), start=1):
            if not _is_blank(raw):
                if total is not None and index >= total:
                    break
                if index % shard_rows == 0:
                    starts.append((index, offset, line_number))
                index += 1
            offset += len(raw)
    path = _absolute(source.spec)
    for shard, (first, start, line_number) in enumerate(starts):
        yield ShardRead(shard, "jsonl", path, first, min(shard_rows, index - first), offset=start, first_line=line_number)


def _read_json(source: Source) -> Iterator[SourceRow]:
    try:
        with open(source.spec, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is allowed
            data = json.load(handle)
    except UnicodeDecodeError as exc:
        raise FtprepError(f"{source.spec} is not UTF-8 text (byte {exc.start}): save it as UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise FtprepError(f"{source.spec} is not valid JSON ({exc.msg.removesuffix(' at')} at line {exc.lineno} column {exc.colno}): "
                          f"{json_fix(exc)}") from exc
    except RecursionError as exc:
        raise FtprepError(f"{source.spec} is nested too deeply to read as JSON") from exc
    except ValueError as exc:
        raise FtprepError(f"{source.spec} cannot be read as JSON: {_first_line(exc)}") from exc
    if isinstance(data, dict):  # {"data": [...]} or {"train": [...]}: a single list inside
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise FtprepError(f"{source.spec} must hold a JSON array of rows")
        data = lists[0]
    if not isinstance(data, list):
        raise FtprepError(f"{source.spec} must hold a JSON array of rows, not {json_kind(data)}")
    for index, row in enumerate(data):
        yield index, row if isinstance(row, dict) else RowError("row is not a JSON object")


def json_fix(error: json.JSONDecodeError) -> str:
    """What to do about a JSON file that does not parse, from where the parser stopped."""
    if error.msg == "Extra data":  # one complete value, then more: JSON Lines under a .json name
        return "for one object per line use .jsonl"
    # The parser stops at the end of the text, or inside a string the end cut open.
    if error.pos >= len(error.doc.rstrip()) - 1 or error.msg.startswith("Unterminated string"):
        return "the file ends before its JSON does (cut short?): replace it with a complete copy"
    return "fix the file at that line"


def json_kind(value) -> str:
    names = {dict: "an object", str: "a string", bool: "true or false", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_csv(source: Source) -> Iterator[SourceRow]:
    csv.field_size_limit(sys.maxsize)
    # utf-8-sig: a byte-order mark is allowed; newline="": the csv module reads LF, CRLF and CR.
    with open(source.spec, newline="", encoding="utf-8-sig", errors="replace") as handle:
        rows = csv.DictReader(handle)
        try:
            for index, row in enumerate(rows):
                if None in row:
                    yield index, RowError("CSV row has more fields than the header")
                else:
                    yield index, row
        except csv.Error as exc:
            raise FtprepError(f"{source.spec} is not valid CSV (line {rows.line_num}: {exc})") from exc


def _open_parquet(path: str):
    import pyarrow.parquet as pq

    with reading(path, "parquet"):
        return pq.ParquetFile(path)


def _read_parquet(source: Source) -> Iterator[SourceRow]:
    return _enumerate_batches(_open_parquet(source.spec).iter_batches(batch_size=1024))


def _parquet_rows_from(path: str, first_index: int) -> Iterator[SourceRow]:
    """Rows from `first_index` on, decoding only the row groups from the one that holds it."""
    parquet = _open_parquet(path)
    group_sizes = [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
    group_starts = np.cumsum([0] + group_sizes)
    first_group = int(np.searchsorted(group_starts, first_index, side="right")) - 1
    groups = list(range(first_group, parquet.num_row_groups))
    rows = _enumerate_batches(parquet.iter_batches(batch_size=1024, row_groups=groups), int(group_starts[first_group]))
    return islice(rows, first_index - int(group_starts[first_group]), None)


def _table_shard_reads(source: Source, shard_rows: int) -> Iterator[ShardRead]:
    if source.kind == "parquet":
        total, files = _open_parquet(source.spec).metadata.num_rows, ()
    else:
        dataset = _load_dataset(source)
        total, files = dataset.num_rows, tuple(_absolute(entry["filename"]) for entry in dataset.cache_files)
        if getattr(dataset, "_indices", None) is not None or not files:  # rows that are not simply the files' rows, in order
            raise FtprepError(f"{source.spec} is not a plain Arrow dataset folder: save it with save_to_disk, or give a .jsonl or .parquet file")
    if source.limit is not None:
        total = min(total, source.limit)
    for shard, first in enumerate(range(0, total, shard_rows)):
        yield ShardRead(shard, source.kind, _absolute(source.spec), first, min(shard_rows, total - first), files=files)


def _arrow_files_table(files: tuple[str, ...]):
    """The rows of a dataset's Arrow files, memory-mapped."""
    from ftprep.writers import read_arrow

    return pa.concat_tables([read_arrow(path) for path in files])


def _load_dataset(source: Source):
    return _disk_dataset(source) if source.kind == "disk" else _hub_dataset(source)


def _read_dataset(source: Source) -> Iterator[SourceRow]:
    """A dataset folder's or hub dataset's rows."""
    return _enumerate_batches(_load_dataset(source).data.to_batches(max_chunksize=1024))


def _disk_dataset(source: Source):
    import datasets

    try:
        loaded = datasets.load_from_disk(source.spec)
    except Exception as exc:  # what open_source's checks of the folder let through: datasets' own reading of it
        raise unreadable(source.spec, "disk", exc) from exc
    return _pick_split(loaded, source)


def _hub_dataset(source: Source):
    import datasets

    from ftprep.models import hub_reachable

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
    return _pick_split(loaded, source)


def _pick_split(loaded, source: Source):
    if not hasattr(loaded, "keys"):
        return loaded
    split = source.split or ("train" if "train" in loaded else None)
    if split not in loaded:
        raise FtprepError(f"{source.spec} has splits {sorted(loaded)}: choose one with --split")
    return loaded[split]


def _enumerate_batches(batches, first_index: int = 0) -> Iterator[SourceRow]:
    index = first_index
    for batch in batches:
        # Checked in full before its values become Python objects: a flipped byte in an Arrow
        # file's offsets or text is an ArrowInvalid here, not a crash or garbage further on.
        batch.validate(full=True)
        for row in batch.to_pylist():
            yield index, row
            index += 1


_READERS = {
    "jsonl": _read_jsonl,
    "json": _read_json,
    "csv": _read_csv,
    "parquet": _read_parquet,
    "disk": _read_dataset,
    "hub": _read_dataset,
}
