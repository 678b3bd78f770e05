"""The local engine reads and tokenizes the next shard while the model works on the current one:
the same output to the byte, reading that overlaps the model, errors where they happened."""

import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from conftest import DATA, score_folder

import ftprep.engines as engines
from ftprep.progress import Progress
from ftprep.read_ahead import ReadAhead
from ftprep.stages.errors import FtprepError

READ_SECONDS = 0.2


class FakeOutput:
    def __init__(self, done=()):
        self.done, self.written = set(done), []

    def has_shard(self, shard):
        return shard in self.done

    def write_shard(self, shard, table, rejects, stats):
        self.written.append(shard)


class SlowReader:
    """A reader that takes READ_SECONDS a shard (a remote dataset, say), and tells when it starts one."""

    def __init__(self, fail_at=None):
        self.started = {}
        self.fail_at = fail_at

    def __call__(self, where):
        self.started.setdefault(where.shard, threading.Event()).set()
        time.sleep(READ_SECONDS)
        if where.shard == self.fail_at:
            raise FtprepError(f"cannot read shard {where.shard}")
        return pa.table({"index": list(range(where.count)), "shard": [where.shard] * where.count})

    def started_event(self, shard):
        return self.started.setdefault(shard, threading.Event())


class WaitingModel:
    """A model stage that, on each shard, waits (at most 5 s) for the reader to start the next one:
    it sees it start only if reading goes on while the model works."""

    def __init__(self, reader, last_shard):
        self.reader, self.last_shard = reader, last_shard
        self.saw_next_read, self.closed = [], False

    def __call__(self, table, rejects):
        shard = table.column("shard")[0].as_py()
        if shard < self.last_shard:
            self.saw_next_read.append(self.reader.started_event(shard + 1).wait(timeout=5))
        else:
            self.saw_next_read.append(None)
        time.sleep(READ_SECONDS)
        return table, {"tokens": table.num_rows}

    def close(self):
        self.closed = True


def run_shards(reader, shards=4, done=()):
    model = WaitingModel(reader, shards - 1)
    output = FakeOutput(done)
    work = engines.ShardWork(read=reader, build_model_stage=lambda: model)
    wheres = [SimpleNamespace(shard=shard, count=3) for shard in range(shards)]
    started = time.perf_counter()
    engines.LocalEngine().run(output, wheres, work, Progress("score", 3 * shards, interval=3600))
    return model, output, time.perf_counter() - started


def test_the_next_shard_is_read_while_the_model_works_on_this_one():
    model, output, seconds = run_shards(SlowReader())
    assert output.written == [0, 1, 2, 3]
    # Every shard but the last: the next one's read began while the model worked on it.
    assert model.saw_next_read == [True, True, True, None] and model.closed
    # 4 reads and 4 model steps of 0.2 s: 1.6 s one after the other, ~1.0 s overlapped.
    print(f"4 shards, read and model {READ_SECONDS} s each: {seconds:.2f} s (serial {8 * READ_SECONDS:.1f} s)")


def test_a_read_error_stops_the_run_at_its_shard_after_the_ones_before():
    reader = SlowReader(fail_at=2)
    with pytest.raises(FtprepError, match="cannot read shard 2"):
        run_shards(reader)


def test_finished_shards_are_skipped_and_the_model_loads_for_the_first_left():
    model, output, _ = run_shards(SlowReader(), shards=3, done={0, 1})
    assert output.written == [2] and model.saw_next_read == [None]


def test_before_start_items_are_prepared_in_the_callers_thread():
    threads = []
    ahead = ReadAhead(range(4), lambda item: threads.append(threading.current_thread().name) or item)
    got = []
    for item in ahead:
        got.append(item)
        if item == 1:
            ahead.start()
    ahead.close()
    assert got == [0, 1, 2, 3]
    assert threads[:2] == [threading.current_thread().name] * 2 and set(threads[2:]) == {"ftprep-read-ahead"}


def shard_files(folder: Path) -> dict:
    """What a run writes that must not depend on timing: its Arrow files and rejects, by name."""
    return {path.name: path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and (path.suffix == ".arrow" or path.name == "rejects.jsonl")}


@pytest.mark.slow
def test_reading_ahead_gives_the_same_output_to_the_byte(tmp_path, tiny_model_dir, monkeypatch):
    settings = {"model": tiny_model_dir, "limit": 24, "shard_rows": 5, "max_length": 96}
    ahead = score_folder(DATA / "sample.jsonl", tmp_path / "ahead", **settings)
    monkeypatch.setattr(engines, "READ_AHEAD_SHARDS", 0)
    serial = score_folder(DATA / "sample.jsonl", tmp_path / "serial", **settings)
    files = shard_files(ahead)
    assert any(name.endswith(".arrow") for name in files) and files == shard_files(serial)
