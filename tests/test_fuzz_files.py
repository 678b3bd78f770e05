"""File-level fuzzing of the readers (issue 28): damaged files and folders of every input kind
ftprep reads, beside the row-level fuzzing of test_fuzz.py.

Per kind a generator damages a good file (cut at random offsets, emptied, replaced by random
bytes, bytes flipped in its header, footer or anywhere, compressed under its plain name, a file
of another kind under its name; for a save_to_disk folder, the same to each of its files, or
the file deleted). Each damaged input goes through the reading layer as a run reads it (the
input opened, the format told from the first rows, one pass over every row, each shard read on
its own, the row count), without a model, and must end in one FtprepError line that names it,
or in rows that are all accounted for (every row read is kept or rejected with a reason).
Anything else, a traceback, fails the test. A handful goes through the command line as a user
runs it: one line on stderr, exit code 1, nothing written; and damage met mid-run keeps the
shards finished before it.
"""

import gzip
import io
import json
import random
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import DATA, run_cli, run_cli_process

import ftprep
from ftprep.readers import open_source, read_shard, rows_and_format, source_table
from ftprep.stages import Rejects
from ftprep.stages.errors import FtprepError, RowError
from ftprep.stages.normalize import NormalizeStage

SEED = 28
MIN_FILES = 200
MAX_SECONDS = 60
ROWS = [json.loads(line) for line in DATA.joinpath("sample.jsonl").read_text().splitlines()[:24]]
FILE_KINDS = ("jsonl", "json", "csv", "parquet")
SUFFIXES = {"jsonl": ".jsonl", "json": ".json", "csv": ".csv", "parquet": ".parquet"}
FOLDER_FILES = ("state.json", "dataset_info.json", "data-00000-of-00003.arrow", "data-00002-of-00003.arrow")


def encoded(kind: str, rows: list[dict] = ROWS) -> bytes:
    """A good file of `kind` holding `rows` (CSV: their first turn as prompt and completion)."""
    if kind == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows).encode()
    if kind == "json":
        return json.dumps(rows, indent=1).encode()
    if kind == "csv":
        import csv

        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["prompt", "completion"])
        writer.writerows([row["messages"][0]["content"], row["messages"][1]["content"]] for row in rows)
        return text.getvalue().encode()
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=5)
    return sink.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def flipped(data: bytes, where: str, rng: random.Random) -> bytes:
    """`data` with 1 to 8 bytes changed in its first or last 64 bytes, or anywhere."""
    damaged = bytearray(data)
    span = {"header": range(min(64, len(data))), "footer": range(max(0, len(data) - 64), len(data))}.get(where, range(len(data)))
    for _ in range(rng.randint(1, 8)):
        damaged[rng.choice(span)] ^= rng.randint(1, 255)
    return bytes(damaged)


def cut(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(1, len(data))]


def file_damages(kind: str, rng: random.Random):
    """(what was done, bytes) for damaged files of `kind`."""
    data = encoded(kind)
    yield "empty", b""
    for _ in range(15):
        yield "cut short", cut(data, rng)
    for _ in range(5):
        yield "random bytes", rng.randbytes(rng.randint(1, 4000))
    for where in ("header", "footer", "anywhere") * 6:
        yield f"bytes flipped in the {where}", flipped(data, where, rng)
    yield "gzip under its plain name", gzip.compress(data)
    yield "zstd under its plain name", pa.compress(data, codec="zstd", asbytes=True)
    for other in FILE_KINDS:
        if other != kind:
            yield f"a {other} file", encoded(other)


def folder_damages(rng: random.Random):
    """(file of the folder, what was done, its new bytes or None to delete it)."""
    for name in FOLDER_FILES:
        yield name, "deleted", None
        yield name, "empty", b""
        yield name, "random bytes", rng.randbytes(rng.randint(1, 2000))
        for _ in range(3):
            yield name, "cut short", "cut"
        for _ in range(2):
            yield name, "bytes flipped", "flip"
    for name, text in (("state.json", "[]"), ("state.json", "{}"), ("state.json", '{"_data_files": [{"filename": "../x"}]}'),
                       ("dataset_info.json", "[]"), ("dataset_info.json", '{"features": 5}')):
        yield name, f"holds {text}", text.encode()


def comparable(rows):
    return [(index, str(row) if isinstance(row, RowError) else row) for index, row in rows]


def outcome(spec: Path) -> str:
    """"refused": one FtprepError line that names `spec`; "read": every row accounted for."""
    try:
        source = open_source(str(spec))
        rows, fmt = rows_and_format(source, None)
        rows = list(rows)
        by_shard = [row for read in source.shard_reads(7, seekable=True) for row in read_shard(read)]
        count = source.count()
    except FtprepError as error:
        message = str(error)
        assert "\n" not in message and str(spec) in message, message
        return "refused"
    assert [index for index, _ in rows] == list(range(len(rows)))
    rejects = Rejects()
    kept, _ = NormalizeStage(fmt)(source_table(rows), rejects)
    assert kept.num_rows + len(rejects) == len(rows)  # in = out + rejected
    assert all(reject["reason"] for reject in rejects.rows())
    assert comparable(by_shard) == comparable(rows)  # what a worker reading one shard gets
    assert count in (None, len(rows))
    return "read"


def save_dataset(folder: Path, rows: list[dict], shards: int = 3) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(folder), num_shards=shards)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A good save_to_disk folder of ROWS in three Arrow files."""
    return save_dataset(tmp_path_factory.mktemp("saved") / "rows", ROWS)


def damaged_folder(saved: Path, target: Path, name: str, change, rng: random.Random) -> Path:
    shutil.copytree(saved, target)
    path = target / name
    if change is None:
        path.unlink()
    else:
        data = path.read_bytes()
        path.write_bytes(cut(data, rng) if change == "cut" else flipped(data, "anywhere", rng) if change == "flip" else change)
    return target


def test_fuzzed_damage_ends_in_one_line_or_a_whole_read(tmp_path, saved):
    started, rng, seen = time.monotonic(), random.Random(SEED), {}
    for kind in FILE_KINDS:
        assert outcome(write(tmp_path / f"good-{kind}{SUFFIXES[kind]}", encoded(kind))) == "read"
        for number, (how, data) in enumerate(file_damages(kind, rng)):
            result = outcome(write(tmp_path / f"{kind}-{number}{SUFFIXES[kind]}", data))
            seen.setdefault((kind, result), []).append(how)
    assert outcome(saved) == "read"
    for number, (name, how, change) in enumerate(folder_damages(rng)):
        result = outcome(damaged_folder(saved, tmp_path / f"folder-{number}", name, change, rng))
        seen.setdefault(("folder", result), []).append(f"{name} {how}")
    files = sum(len(hows) for hows in seen.values())
    seconds = time.monotonic() - started
    print(f"file-level fuzz: {files} damaged inputs in {seconds:.1f} s: "
          + ", ".join(f"{kind} {result} {len(hows)}" for (kind, result), hows in sorted(seen.items())))
    assert files >= MIN_FILES and seconds < MAX_SECONDS
    for kind in (*FILE_KINDS, "folder"):  # every kind's damage is refused somewhere: the generator damages
        assert seen.get((kind, "refused")), kind


# -- each damage and its line ---------------------------------------------------------------

def parquet_without_a_row_group() -> bytes:
    """Header and footer whole, the bytes of the first row groups gone: the footer points past them."""
    data = encoded("parquet")
    footer = int.from_bytes(data[-8:-4], "little") + 8
    return data[:4] + data[len(data) // 2 : -footer] + data[-footer:]


def parquet_with_a_garbled_footer() -> bytes:
    data = bytearray(encoded("parquet"))
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[footer : footer + 32] = b"\xff" * 32
    return bytes(data)


def parquet_no_format_fits() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"question": ["a", "b"], "reply": ["c", "d"]}), sink)
    return sink.getvalue()


FILE_CASES = {
    "0-byte Parquet": ("rows.parquet", lambda: b"", "is empty (0 bytes): check the path"),
    "random bytes as Parquet": ("rows.parquet", lambda: random.Random(1).randbytes(500), "is not a Parquet file (no PAR1 magic bytes)"),
    "Parquet cut short": ("rows.parquet", lambda: encoded("parquet")[:-100], "starts as a Parquet file but has no footer"),
    "Parquet with a garbled footer": ("rows.parquet", parquet_with_a_garbled_footer, "is damaged or cut short, it cannot be read as Parquet"),
    "Parquet without a row group": ("rows.parquet", parquet_without_a_row_group, "is damaged or cut short, it cannot be read as Parquet"),
    "Parquet whose columns no format fits": ("rows.parquet", parquet_no_format_fits, "cannot tell the data format of"),
    "JSON Lines named .parquet": ("rows.parquet", lambda: encoded("jsonl"), "is text, not a Parquet file"),
    "gzip named .parquet": ("rows.parquet", lambda: gzip.compress(encoded("parquet")), "is gzip-compressed data, not a Parquet file"),
    "gzip named .jsonl": ("rows.jsonl", lambda: gzip.compress(encoded("jsonl")), "is gzip-compressed data, not JSON Lines text: decompress it first"),
    "zstd named .jsonl": ("rows.jsonl", lambda: pa.compress(encoded("jsonl"), codec="zstd", asbytes=True), "is zstd-compressed data"),
    "random bytes as JSON Lines": ("rows.jsonl", lambda: random.Random(2).randbytes(3000), "is binary data, not JSON Lines text"),
    "Parquet named .jsonl": ("rows.jsonl", lambda: encoded("parquet"), "is a Parquet file, not JSON Lines text: name it .parquet"),
    "a JSON array named .jsonl": ("rows.jsonl", lambda: encoded("json"), "a JSON array goes in a .json file"),
    "UTF-16 JSON Lines": ("rows.jsonl", lambda: encoded("jsonl").decode().encode("utf-16"), "is UTF-16 text, not JSON Lines text: save it as UTF-8"),
    "gzip named .csv": ("rows.csv", lambda: gzip.compress(encoded("csv")), "is gzip-compressed data, not CSV text"),
    "random bytes as CSV": ("rows.csv", lambda: random.Random(3).randbytes(3000), "is binary data, not CSV text"),
    "JSON cut short": ("rows.json", lambda: encoded("json")[:-30], "ends before its JSON does (cut short?)"),
    "JSON not UTF-8": ("rows.json", lambda: encoded("json").replace(b"Canberra", b"Canb\xe9rra"), "is not UTF-8 text (byte"),
    "JSON holding a number": ("rows.json", lambda: b"5", "must hold a JSON array of rows, not a number"),
    "JSON Lines named .json": ("rows.json", lambda: encoded("jsonl"), "for one object per line use .jsonl"),
}


def refusal(spec) -> str:
    with pytest.raises(FtprepError) as caught:
        source = open_source(str(spec))
        rows, _ = rows_and_format(source, None)
        list(rows)
    return str(caught.value)


@pytest.mark.parametrize("case", FILE_CASES)
def test_each_damaged_file_ends_in_its_line(tmp_path, case):
    name, make, needle = FILE_CASES[case]
    path = write(tmp_path / name, make())
    message = refusal(path)
    assert str(path) in message and needle in message and "\n" not in message, message


def dataset_dict(folder: Path) -> None:
    """A DatasetDict folder whose test split is gone."""
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(folder))
    shutil.rmtree(folder / "test")


FOLDER_CASES = {
    "no state.json": (lambda f: (f / "state.json").unlink(), "is a folder but not a saved dataset (no state.json)"),
    "garbled state.json": (lambda f: (f / "state.json").write_text('{"_data_files": ['), "state.json is damaged"),
    "state.json without data files": (lambda f: (f / "state.json").write_text("{}"), "state.json is damaged (no list of data files)"),
    "no dataset_info.json": (lambda f: (f / "dataset_info.json").unlink(), "has no dataset_info.json"),
    "garbled dataset_info.json": (lambda f: (f / "dataset_info.json").write_text("{"), "dataset_info.json is damaged"),
    "an Arrow file cut short": (lambda f: write(f / FOLDER_FILES[2], (f / FOLDER_FILES[2]).read_bytes()[:300]),
                                f"{FOLDER_FILES[2]} is damaged or cut short"),
    "a shard missing": (lambda f: (f / FOLDER_FILES[3]).unlink(), f"{FOLDER_FILES[3]} is missing (state.json lists it)"),
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_each_damaged_dataset_folder_ends_in_its_line(tmp_path, saved, case):
    damage, needle = FOLDER_CASES[case]
    folder = tmp_path / "saved"
    shutil.copytree(saved, folder)
    damage(folder)
    message = refusal(folder)
    assert str(folder) in message and needle in message and "\n" not in message, message


def test_a_dataset_dict_with_a_split_gone_is_one_line(tmp_path):
    dataset_dict(tmp_path / "dict")
    assert "test is missing or not a saved dataset" in refusal(tmp_path / "dict")


def test_a_local_path_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata").mkdir()
    for spec, needle in (("mydata/train", "input not found: mydata/train (mydata/ is a local folder, and it holds no train)"),
                         ("user/rows.jsonl.gz", "input not found: user/rows.jsonl.gz"),
                         ("not a/hub id", "input not found: not a/hub id")):
        assert refusal(spec) == needle


# -- through the command line ---------------------------------------------------------------

@pytest.mark.parametrize("case", ["0-byte Parquet", "random bytes as Parquet"])
def test_score_on_a_damaged_parquet_prints_one_line(tmp_path, tiny_model_dir, case):
    name, make, needle = FILE_CASES[case]
    path = write(tmp_path / name, make())
    out = tmp_path / "out"
    result = run_cli_process("score", path, "-o", out, "--model", tiny_model_dir, check=False)
    assert result.returncode == 1 and result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} ") and needle in lines[0], result.stderr
    assert not out.exists()


def committed_shards(out: Path) -> list[int]:
    return sorted(int(path.stem.split("-")[1]) for path in (out / ".ftprep-partial").glob("shard-*.json"))


def long_rows(count: int, marker_at: int | None = None) -> list[dict]:
    """`count` short conversations with ids r0, r1...; the one at `marker_at` says MARKER."""
    return [{"id": f"r{i}", "messages": [{"role": "user", "content": "Say hi."},
                                         {"role": "assistant", "content": "MARKER" * 4 if i == marker_at else f"Hi {i}."}]}
            for i in range(count)]


def folder_damaged_in_its_last_file(folder: Path) -> Path:
    """150 rows in three Arrow files; the last one's text is no UTF-8 at row 120: its framing is
    whole (the folder opens), its rows are not (found when the run reaches them)."""
    save_dataset(folder, long_rows(150, marker_at=120))
    last = folder / "data-00002-of-00003.arrow"
    last.write_bytes(last.read_bytes().replace(b"MARKER" * 4, b"\xff" * 24))
    return folder


def parquet_damaged_in_a_later_row_group(path: Path) -> Path:
    """1,500 rows in row groups of 512; the third group's first page header garbled. The reader
    decodes 1,024 rows at a time, so the first 1,024 rows read whole."""
    pq.write_table(pa.Table.from_pylist(long_rows(1500)), path, row_group_size=512, compression="none")
    column = pq.ParquetFile(path).metadata.row_group(2).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 32] = b"\xff" * 32
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damaged, shard_rows, shards_kept", [
    (lambda tmp: folder_damaged_in_its_last_file(tmp / "saved"), 25, [0, 1, 2, 3]),
    (lambda tmp: parquet_damaged_in_a_later_row_group(tmp / "rows.parquet"), 256, [0, 1, 2, 3]),
], ids=["a later Arrow file of a folder", "a later row group of a Parquet file"])
def test_damage_found_mid_run_stops_it_and_keeps_the_finished_shards(tmp_path, tiny_model_dir, no_model, damaged, shard_rows,
                                                                      shards_kept):
    spec, out = damaged(tmp_path), tmp_path / "out"
    result = run_cli("score", spec, "-o", out, "--model", tiny_model_dir, "--shard-rows", shard_rows, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {spec}") and "is damaged or cut short" in last, result.stderr
    assert committed_shards(out) == shards_kept and not (out / "ftprep.json").exists()


# -- folders the other commands read ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_outputs(tmp_path_factory, tiny_model_dir):
    """(scored, train): six sample rows scored with the random stand-in model, and masked."""
    folder = tmp_path_factory.mktemp("outputs")
    rows = write(folder / "rows.jsonl", encoded("jsonl", ROWS[:6]))
    ftprep.score(str(rows), output=str(folder / "scored"), model=tiny_model_dir, shard_rows=2)
    ftprep.mask(str(folder / "scored"), output=str(folder / "train"))
    return folder / "scored", folder / "train"


def foreign(kind: str, folder: Path, scored: Path, saved: Path) -> Path:
    """A folder (or file) that is no ftprep output, of `kind`."""
    manifests = {"garbled ftprep.json": b"{not json", "ftprep.json holding a list": b"[]", "ftprep.json holding {}": b"{}",
                 "ftprep.json of no known stage": b'{"stage": "train", "counts": {}}',
                 "ftprep.json without a model": b'{"stage": "score", "config": {}, "counts": {"rows_out": 3}}',
                 "ftprep.json of a mask without its scores": b'{"stage": "mask", "config": {"strategy": "threshold"}}'}
    if kind == "a file":
        return write(folder.with_suffix(".jsonl"), encoded("jsonl"))
    if kind in ("a save_to_disk folder", "a dataset under a scored folder's ftprep.json"):
        shutil.copytree(saved, folder)
        if kind != "a save_to_disk folder":
            shutil.copy(scored / "ftprep.json", folder / "ftprep.json")
        return folder
    if kind == "a scored folder with its data files swapped":
        shutil.copytree(scored, folder)
        for path in sorted(folder.glob("data-*.arrow")):
            shutil.copy(saved / path.name, path)
        return folder
    folder.mkdir()
    if kind in manifests:
        write(folder / "ftprep.json", manifests[kind])
    return folder


FOREIGN = ("an empty folder", "a file", "a save_to_disk folder", "a dataset under a scored folder's ftprep.json",
           "a scored folder with its data files swapped", "garbled ftprep.json", "ftprep.json holding a list",
           "ftprep.json holding {}", "ftprep.json of no known stage", "ftprep.json without a model",
           "ftprep.json of a mask without its scores")
# The commands that read a folder's rows (stats reads its stats.json only, and says so when it has none).
COMMANDS = {
    "mask": lambda folder, scored, out: ["mask", folder, "-o", out],
    "mask --against": lambda folder, scored, out: ["mask", scored, "-o", out, "--strategy", "delta", "--against", folder],
    "report": lambda folder, scored, out: ["report", folder, "-o", out.with_suffix(".html")],
    "inspect": lambda folder, scored, out: ["inspect", folder],
    "export-config": lambda folder, scored, out: ["export-config", folder],
    "export": lambda folder, scored, out: ["export", folder, "--parquet", out],
    "push": lambda folder, scored, out: ["push", folder, "user/name"],
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_folders_that_are_no_ftprep_output_are_refused_in_one_line_by_every_command(tmp_path, tiny_outputs, saved, kind):
    scored, _ = tiny_outputs
    for command, args in COMMANDS.items():
        folder = foreign(kind, tmp_path / command.replace(" ", "_"), scored, saved)
        out = tmp_path / f"{command.replace(' ', '_')}-out"
        # No network: push must refuse the folder before it looks for a token or the Hub.
        result = run_cli(*args(folder, scored, out), check=False, env={"HF_TOKEN": "", "HF_HUB_OFFLINE": "1"})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and lines and "Traceback" not in result.stderr, (command, result)
        assert lines[-1].startswith("error: ") and str(folder) in lines[-1], (command, lines[-1])
        assert not out.exists() and not out.with_suffix(".html").exists(), command
