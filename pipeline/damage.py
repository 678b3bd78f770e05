"""What is wrong with an input that cannot be read, said in one line (issue 28).

Two moments: before any row is read, a file's first bytes and a dataset folder's own files
say whether it is what its name claims (so a wrong file fails before a model loads); while
rows are read, `reading` turns the readers' low-level errors (pyarrow, the csv module,
Unicode decoding) into an FtprepError. Every line names the file, what is wrong with it and
what to do.
"""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa

from ftprep.stages.errors import FtprepError

KIND_NAMES = {"jsonl": "JSON Lines", "json": "JSON", "csv": "CSV", "parquet": "Parquet", "disk": "a saved dataset",
              "hub": "a hub dataset"}
TEXT_KINDS = ("jsonl", "json", "csv")
PARQUET_MAGIC = b"PAR1"

# What a file is by the bytes it starts with, and what to do where another kind was expected.
SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed data", "decompress it first (gzip -dk FILE)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data", "decompress it first (zstd -d FILE)"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "decompress it first (xz -dk FILE)"),
    (b"BZh", "bzip2-compressed data", "decompress it first (bzip2 -dk FILE)"),
    (b"PK\x03\x04", "a zip archive", "unzip it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "unpack it first"),
    (PARQUET_MAGIC, "a Parquet file", "name it .parquet"),
    (b"ARROW1", "an Arrow file", "convert it to Parquet, or give the dataset folder it belongs to"),
    (b"\xff\xff\xff\xff", "an Arrow stream (a file of a saved dataset)", "give the folder save_to_disk wrote"),
    (b"\xff\xfe", "UTF-16 text", "save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "save it as UTF-8"),
)
SNIFF_BYTES = 64 * 1024
# Text never holds C0 control characters other than these; random bytes hold one in nine.
TEXT_CONTROLS = "\t\n\r\f\v\x1b"
# A file counts as not text when this share of its first characters are control characters or
# bytes that are no UTF-8: random bytes come near 60 %, text with a few bad rows or a few
# Latin-1 letters stays far below (one bad row is a reject, not a reason to refuse the file).
NOT_TEXT_SHARE = 0.3
# Of those, text in another encoding than UTF-8 (Latin-1, cp1251) holds no control characters.
BINARY_CONTROL_SHARE = 0.01
DETAIL_CHARS = 160


# -- before reading: is the file what its name says? ---------------------------------------

def check_file(path: Path, kind: str) -> None:
    """Raise FtprepError where the file at `path` cannot be `kind` (jsonl, json, csv, parquet)."""
    size = path.stat().st_size
    if size == 0:
        raise FtprepError(f"{path} is empty (0 bytes): check the path, or write the file again")
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
        if kind == "parquet":
            handle.seek(max(0, size - len(PARQUET_MAGIC)))
            tail = handle.read()
    problem = parquet_problem(head, tail, size) if kind == "parquet" else text_problem(head, KIND_NAMES[kind])
    if problem:
        raise FtprepError(f"{path} {problem}")


def signature_of(head: bytes) -> tuple[str, str] | None:
    """(what the file is, what to do) where its first bytes are another format's signature."""
    for magic, what, fix in SIGNATURES:
        if head.startswith(magic) and (magic != b"BZh" or head[3:10].startswith(tuple(b"%d1AY&SY" % n for n in range(1, 10)))):
            return what, fix
    return None


def parquet_problem(head: bytes, tail: bytes, size: int) -> str | None:
    """Why a file named .parquet is no Parquet file, from its first and last bytes; None if it may be one
    (its footer is then pyarrow's to read)."""
    starts, ends = head.startswith(PARQUET_MAGIC), tail == PARQUET_MAGIC and size >= 2 * len(PARQUET_MAGIC) + 4
    if starts and ends:
        return None
    if starts:
        return "is cut short or damaged: it starts as a Parquet file but has no footer at its end: replace it with a complete copy"
    if ends:
        return "is damaged: it ends as a Parquet file but does not start as one: replace it with a complete copy"
    found = signature_of(head)
    if found:
        return f"is {found[0]}, not a Parquet file: {found[1]}"
    controls, _ = odd_shares(head)
    if controls == 0:
        return "is text, not a Parquet file (no PAR1 magic bytes): name it after what it holds (.jsonl, .json or .csv)"
    return "is not a Parquet file (no PAR1 magic bytes): check the path, or name the file after its kind"


def text_problem(head: bytes, kind_name: str) -> str | None:
    """Why a file named as text (JSON Lines, JSON, CSV) is not text, from its first bytes; None if it is."""
    found = signature_of(head)
    if found:
        return f"is {found[0]}, not {kind_name} text: {found[1]}"
    controls, undecodable = odd_shares(head)
    if controls + undecodable <= NOT_TEXT_SHARE:
        return None
    if controls > BINARY_CONTROL_SHARE:
        return f"is binary data, not {kind_name} text: check the path"
    return f"is not UTF-8 text (byte {first_undecodable(head)}): save it as UTF-8"


def odd_shares(head: bytes) -> tuple[float, float]:
    """The shares of control characters and of bytes that are no UTF-8 among the characters of `head`."""
    text = head.decode("utf-8", errors="replace")
    if not text:
        return 0.0, 0.0
    controls = sum(1 for char in text if (char < " " and char not in TEXT_CONTROLS) or char == "\x7f")
    return controls / len(text), text.count("\ufffd") / len(text)


def first_undecodable(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return len(data)


def check_dataset_folder(folder: Path) -> None:
    """Raise FtprepError where a save_to_disk folder (or a DatasetDict's) is damaged: its own
    JSON files garbled, a data file it lists missing or cut short."""
    from ftprep.writers import read_arrow

    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file() and not (folder / "state.json").is_file():
        splits = _json_file(dict_file, "the list of splits").get("splits")
        if not isinstance(splits, list) or not all(isinstance(split, str) and _plain_name(split) for split in splits):
            raise FtprepError(f"{dict_file} is damaged (no list of splits): save the dataset again with save_to_disk")
        for split in splits:
            if not (folder / split / "state.json").is_file():
                raise FtprepError(f"{folder / split} is missing or not a saved dataset (no state.json): save the dataset again")
            check_dataset_folder(folder / split)
        return
    state = _json_file(folder / "state.json", "the dataset's state")
    files = state.get("_data_files")
    if not isinstance(files, list) or not files or not all(isinstance(entry, dict) and _plain_name(entry.get("filename"))
                                                             for entry in files):
        raise FtprepError(f"{folder / 'state.json'} is damaged (no list of data files): save the dataset again with save_to_disk")
    info = folder / "dataset_info.json"
    if not info.is_file():
        raise FtprepError(f"{folder} has no dataset_info.json (save_to_disk writes it beside state.json): "
                          "save the dataset again with save_to_disk")
    if not isinstance(_json_file(info, "the dataset's description").get("features", {}), (dict, type(None))):
        raise FtprepError(f"{info} is damaged (its features are not a mapping): save the dataset again with save_to_disk")
    for entry in files:
        path = folder / entry["filename"]
        if not path.is_file():
            raise FtprepError(f"{path} is missing (state.json lists it): save the dataset again with save_to_disk")
        with reading(path, "disk"):
            read_arrow(path)  # memory-mapped: reads the file's framing, not its rows


def _plain_name(name) -> bool:
    """A file or folder name inside the dataset folder, not a path out of it."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def _json_file(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise FtprepError(f"{path} is damaged ({what} is not valid JSON: {detail(error)}): "
                          "save the dataset again with save_to_disk") from error
    if not isinstance(data, dict):
        raise FtprepError(f"{path} is damaged ({what} is not a JSON object): save the dataset again with save_to_disk")
    return data


# -- while reading: a reader's low-level error -------------------------------------------

FIXES = {"disk": "save the dataset again with save_to_disk",
         "hub": "remove it from the datasets cache (~/.cache/huggingface/datasets) and load it again"}


@contextmanager
def reading(path, kind: str):
    """Turns what a reader raises on damaged bytes into one FtprepError line about `path`.

    An OSError with an errno (permission denied, a disk error) is left to the CLI, which prints
    it with its path; pyarrow raises its own I/O errors without one."""
    try:
        yield
    except OSError as error:
        if error.errno is not None:
            raise
        raise unreadable(path, kind, error) from error
    except (pa.ArrowException, UnicodeError, EOFError, csv.Error) as error:
        raise unreadable(path, kind, error) from error


def unreadable(path, kind: str, error: BaseException) -> FtprepError:
    fix = FIXES.get(kind, "replace it with a complete copy")
    return FtprepError(f"{path} is damaged or cut short, it cannot be read as {KIND_NAMES[kind]} ({detail(error)}): {fix}")


def detail(error: BaseException) -> str:
    """A low-level error's message, short: its first line, at most DETAIL_CHARS characters."""
    if isinstance(error, KeyError) and error.args:  # its text is only the key's repr
        return f"no {error.args[0]!r} in it"
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line if len(line) <= DETAIL_CHARS else line[: DETAIL_CHARS - 3].rstrip() + "..."
