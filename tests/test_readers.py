"""Shard reads: a worker that reads one shard by itself gets exactly the rows one pass over the
input puts in that shard (what lets the Ray engine write the local engine's output)."""

import itertools
import json

import pytest
from conftest import DATA

from ftprep.readers import open_source, read_shard
from ftprep.stages.errors import RowError


def one_pass_shards(source, shard_rows):
    rows = source.rows()
    return list(iter(lambda: list(itertools.islice(rows, shard_rows)), []))


def comparable(chunk):
    return [(index, str(row) if isinstance(row, RowError) else row) for index, row in chunk]


def assert_same_shards(spec, shard_rows, limit=None):
    source = open_source(str(spec), limit=limit)
    expected = one_pass_shards(source, shard_rows)
    reads = list(source.shard_reads(shard_rows, seekable=True))
    assert [read.shard for read in reads] == list(range(len(expected)))
    assert [read.count for read in reads] == [len(chunk) for chunk in expected]
    # Each read goes through pickle, as it does on its way to a Ray task.
    import pickle

    got = [read_shard(pickle.loads(pickle.dumps(read))) for read in reads]
    assert [comparable(chunk) for chunk in got] == [comparable(chunk) for chunk in expected], (spec, shard_rows, limit)
    return reads


@pytest.fixture
def awkward_jsonl(tmp_path):
    """Blank lines, a whitespace-only line, malformed JSON, a non-object, non-ASCII text and CRLF endings."""
    lines = (DATA / "sample.jsonl").read_bytes().splitlines(keepends=True)[:9]
    bad = (DATA / "bad_rows.jsonl").read_bytes().splitlines(keepends=True)
    extra = [b"\n", b"   \t\n", "\u00a0\n".encode(), b"[1, 2]\r\n",
             json.dumps({"prompt": "caf\u00e9 \u2603", "completion": "ok"}, ensure_ascii=False).encode() + b"\r\n"]
    path = tmp_path / "awkward.jsonl"
    path.write_bytes(b"".join(lines[:3] + extra + bad + lines[3:]))
    return path


@pytest.mark.parametrize("shard_rows", [1, 3, 7, 1000])
def test_jsonl_shards_by_byte_offset(awkward_jsonl, shard_rows):
    reads = assert_same_shards(awkward_jsonl, shard_rows)
    assert all(read.rows is None for read in reads)  # the rows stay in the file, not in the read
    assert_same_shards(awkward_jsonl, shard_rows, limit=5)


def test_the_limit_cuts_the_last_shard(awkward_jsonl):
    reads = assert_same_shards(awkward_jsonl, 4, limit=10)
    assert [read.count for read in reads] == [4, 4, 2]


@pytest.mark.parametrize("shard_rows", [1, 4, 7, 100])
def test_parquet_and_dataset_folders_by_row(tmp_path, shard_rows):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "sample.jsonl").read_text().splitlines()]
    # Row groups of 6: shards start inside groups and span several.
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet", row_group_size=6)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"), num_shards=3)
    assert len(list((tmp_path / "saved").glob("*.arrow"))) > 1  # rows counted across the dataset's files
    for spec in (tmp_path / "rows.parquet", tmp_path / "saved"):
        assert_same_shards(spec, shard_rows)
        assert_same_shards(spec, shard_rows, limit=9)


@pytest.mark.parametrize("name", ["alpaca.csv", "alpaca.json"])
def test_csv_and_json_rows_travel_with_their_shard(name):
    reads = assert_same_shards(DATA / "formats" / name, 1)
    assert all(read.rows is not None for read in reads)


def test_one_pass_reads_hold_their_rows():
    source = open_source(str(DATA / "sample.jsonl"))
    reads = list(source.shard_reads(16, seekable=False))
    assert [read.count for read in reads] == [16, 16, 8]
    assert [comparable(read_shard(read)) for read in reads] == [comparable(chunk) for chunk in one_pass_shards(source, 16)]


def test_the_row_count_for_progress_never_passes_what_the_input_holds(tmp_path):
    """--limit 8 on 3 rows ends at 3/3 in every format, and the full count where it is cheap."""
    import csv

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    with open(tmp_path / "rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for spec in ("rows.jsonl", "rows.json", "rows.csv", "rows.parquet", "saved"):
        path = str(tmp_path / spec)
        assert open_source(path, limit=8).count() == 3, spec
        assert open_source(path, limit=2).count() == 2, spec
        assert open_source(path).count() in (3, None), spec  # json, csv: not counted in a pass of its own
    for spec in ("rows.jsonl", "rows.parquet", "saved"):
        assert open_source(str(tmp_path / spec)).count() == 3, spec


def test_a_malformed_row_names_its_line_and_column_as_python_does(tmp_path):
    """The line as an editor numbers it (blank lines counted), the column as json.loads gives it,
    in a shard read from the middle of the file too."""
    good = json.dumps({"prompt": "q", "completion": "a"})
    bad = '{"prompt": "q", "completion": }'
    lines = [good, "", good, good, "", "", bad, good]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(json.JSONDecodeError) as python:
        json.loads(bad)
    expected = f"malformed JSON: {python.value.msg} at line 7 column {python.value.colno}"
    source = open_source(str(path))
    in_one_pass = [row for _, row in source.rows() if isinstance(row, RowError)]
    by_shard = [row for read in source.shard_reads(2, seekable=True) for _, row in read_shard(read)
                if isinstance(row, RowError)]
    assert [str(row) for row in in_one_pass] == [str(row) for row in by_shard] == [expected]


def test_a_malformed_json_file_names_the_line_and_column_python_reports(tmp_path):
    from ftprep.stages.errors import FtprepError

    text = '[\n  {"prompt": "q", "completion": "a"},\n  {"prompt": "q", "completion": }\n]'
    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as python:
        json.loads(text)
    with pytest.raises(FtprepError) as error:
        list(open_source(str(path)).rows())
    assert f"({python.value.msg} at line 3 column {python.value.colno})" in str(error.value)
    assert python.value.lineno == 3 and "\n" not in str(error.value)
