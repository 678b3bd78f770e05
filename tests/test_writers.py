"""Sharded outputs: atomic shards, and a finalize that a kill in its middle cannot break."""

import os

import datasets
import pyarrow as pa
import pytest

from ftprep.manifest import RunManifest
from ftprep.stages.errors import FtprepError
from ftprep.writers import ShardedOutput

SCHEMA = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32()))])


def shard(first, count):
    return pa.table({"id": [str(i) for i in range(first, first + count)], "input_ids": [[i, i + 1] for i in range(first, first + count)]}, schema=SCHEMA)


def write_three_shards(folder):
    output = ShardedOutput(str(folder), {"run": 1})
    output.write_shard(0, shard(0, 3), [], {"rows_in": 3})
    output.write_shard(1, None, [{"index": 3, "reason": "bad"}], {"rows_in": 1})  # every row rejected
    output.write_shard(2, shard(4, 2), [], {"rows_in": 2})
    return output


def test_finalize_killed_halfway_finishes_when_run_again(tmp_path):
    output = write_three_shards(tmp_path / "out")
    # A kill after the first shard was moved into place: the rerun must still find all rows.
    os.replace(output.partial / "shard-00000.arrow", tmp_path / "out" / "data-00000-of-00002.arrow")
    rerun = ShardedOutput(str(tmp_path / "out"), {"run": 1})
    assert rerun.has_shard(0) and rerun.has_shard(1) and rerun.has_shard(2)
    rerun.finalize(SCHEMA, RunManifest(stage="test", config={}), {"rows_in": 6})
    loaded = datasets.load_from_disk(str(tmp_path / "out"))
    assert loaded["id"] == ["0", "1", "2", "4", "5"]
    assert (tmp_path / "out" / "rejects.jsonl").read_text().count("\n") == 1
    assert ShardedOutput(str(tmp_path / "out"), {"run": 1}).complete


def test_all_rows_rejected_still_gives_a_loadable_dataset(tmp_path):
    output = ShardedOutput(str(tmp_path / "out"), {"run": 1})
    output.write_shard(0, None, [{"index": 0, "reason": "bad"}], {})
    output.finalize(SCHEMA, RunManifest(stage="test", config={}), {})
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 0


def test_unfinished_run_with_other_settings_is_not_mixed_in(tmp_path):
    write_three_shards(tmp_path / "out")
    with pytest.raises(FtprepError, match="unfinished run with other settings"):
        ShardedOutput(str(tmp_path / "out"), {"run": 2})
    assert ShardedOutput(str(tmp_path / "out"), {"run": 2}, overwrite=True).has_shard(0) is False


def score_identity(threshold=2.5, size=1204, path="/data/rows.jsonl"):
    return {"command": "score", "settings": {"input": path, "top_k": 0, "threshold": threshold},
            "input": {"path": path, "size": size, "mtime_ns": 1_700_000_000_000_000_000}}


def test_a_changed_setting_or_input_is_named_with_both_values(tmp_path):
    folder = tmp_path / "out"
    output = ShardedOutput(str(folder), score_identity())
    output.write_shard(0, shard(0, 3), [], {"rows_in": 3})
    with pytest.raises(FtprepError) as unfinished:
        ShardedOutput(str(folder), score_identity(size=1377))
    assert str(unfinished.value) == (f"{folder} holds an unfinished run with other settings or input (the input's size: "
                                     "1,204 bytes then, 1,377 bytes now): pass --overwrite to start again")
    output.finalize(SCHEMA, RunManifest(stage="test", config={}), {"rows_in": 3})
    with pytest.raises(FtprepError) as finished:
        ShardedOutput(str(folder), score_identity(threshold=3.0, path="/data/other.jsonl"))
    message = str(finished.value)
    assert message.startswith(f"{folder} holds an ftprep output made with other settings or input (")
    assert "input: /data/rows.jsonl then, /data/other.jsonl now" in message  # an argument: no --input flag
    assert "--threshold 2.5 then, --threshold 3.0 now" in message
    assert "the input's path: /data/rows.jsonl then, /data/other.jsonl now" in message
    assert message.endswith(": pass --overwrite or choose another -o") and "\n" not in message


def test_a_resumed_output_counts_the_shards_an_earlier_run_committed(tmp_path):
    assert ShardedOutput(str(tmp_path / "new"), {"run": 1}).committed_count() == 0
    write_three_shards(tmp_path / "out")
    assert ShardedOutput(str(tmp_path / "out"), {"run": 1}).committed_count() == 3
