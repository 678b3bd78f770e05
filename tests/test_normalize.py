"""Every input format and source gives the same normalized conversations; bad rows get reasons."""

import json

import pytest
from conftest import DATA, read_jsonl

from ftprep.readers import open_source
from ftprep.stages.errors import FtprepError, RowError
from ftprep.stages.normalize import detect_format, normalize_row, row_id

FORMAT_FILES = {
    "messages.jsonl": "messages",
    "messages.json": "messages",
    "sharegpt.jsonl": "sharegpt",
    "prompt_completion.jsonl": "prompt-completion",
    "prompt_completion_messages.jsonl": "prompt-completion",
    "alpaca.json": "alpaca",
    "alpaca.csv": "alpaca",
}
# The two alpaca rows that split the question into instruction + input (data/formats/README.md).
ALPACA_WITH_INPUT = {0, 3}


def conversations(path):
    rows = [row for _, row in open_source(str(path)).rows()]
    fmt = detect_format(rows)
    return fmt, [normalize_row(row, fmt) for row in rows]


def expected():
    return [row["messages"] for row in read_jsonl(DATA / "formats" / "messages.jsonl")]


@pytest.mark.parametrize("name", sorted(FORMAT_FILES))
def test_each_format_gives_the_same_conversations(name):
    fmt, got = conversations(DATA / "formats" / name)
    assert fmt == FORMAT_FILES[name]
    want = expected()
    assert len(got) == len(want) == 6
    for index, (conversation, reference) in enumerate(zip(got, want)):
        if fmt == "alpaca" and index in ALPACA_WITH_INPUT:
            assert conversation[1] == reference[1]  # the answer is the same
            assert conversation[0]["role"] == "user" and "\n\n" in conversation[0]["content"]
        else:
            assert conversation == reference


def test_parquet_and_saved_dataset_sources(tmp_path):
    import datasets

    rows = read_jsonl(DATA / "formats" / "messages.jsonl")
    dataset = datasets.Dataset.from_list(rows)
    dataset.to_parquet(tmp_path / "rows.parquet")
    dataset.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": dataset}).save_to_disk(tmp_path / "saved_dict")
    for source in ("rows.parquet", "saved", "saved_dict"):
        fmt, got = conversations(tmp_path / source)
        assert fmt == "messages" and got == expected(), source


def test_system_and_multi_turn_conversations_keep_every_turn():
    rows = read_jsonl(DATA / "sample.jsonl")
    multi = [row for row in rows if sum(m["role"] == "assistant" for m in row["messages"]) == 2]
    system = [row for row in rows if row["messages"][0]["role"] == "system"]
    assert multi and system
    for row in multi + system:
        assert normalize_row(row, "messages") == row["messages"]


def test_limit_takes_the_first_rows():
    assert [index for index, _ in open_source(str(DATA / "sample.jsonl"), limit=5).rows()] == [0, 1, 2, 3, 4]


def test_sharegpt_roles_are_mapped():
    row = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert [m["role"] for m in normalize_row(row, "sharegpt")] == ["system", "user", "assistant"]


BAD_ROWS = {
    1: "malformed JSON",
    3: "missing field 'messages'",
    4: "empty assistant turn",
    6: "unknown role 'robot'",
    7: "message content is int, not a string",
    9: "no assistant turn",
    10: "empty conversation",
}


def test_bad_rows_get_their_reasons():
    rows = list(open_source(str(DATA / "bad_rows.jsonl")).rows())
    assert len(rows) == 12
    reasons = {}
    for index, row in rows:
        try:
            if isinstance(row, RowError):
                raise row
            normalize_row(row, "messages")
        except RowError as error:
            reasons[index] = str(error)
    assert set(reasons) == set(BAD_ROWS)
    for index, reason in BAD_ROWS.items():
        assert reasons[index].startswith(reason), (index, reasons[index])


def test_row_id_falls_back_to_the_source_index():
    assert row_id({"id": "x"}, 3) == "x"
    assert row_id({"id": 7}, 3) == "7"
    assert row_id({}, 3) == "3"


def test_run_level_input_errors(tmp_path):
    with pytest.raises(FtprepError, match="input not found"):
        open_source(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(FtprepError, match="unknown input type"):
        open_source(str(tmp_path / "data.txt"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(FtprepError, match="not a saved dataset"):
        open_source(str(tmp_path / "folder"))
    with pytest.raises(FtprepError, match="cannot tell the data format"):
        detect_format([{"text": "a"}, {"text": "b"}])
    (tmp_path / "broken.json").write_text(json.dumps([{"a": 1}])[:-3])
    with pytest.raises(FtprepError, match="not valid JSON"):
        list(open_source(str(tmp_path / "broken.json")).rows())
