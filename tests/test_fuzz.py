"""Property-based fuzzing of `ftprep score`'s reading, normalizing and tokenizing (issues 14
and 19): generated files of every kind, full of malformed rows, run through the real command
line. Whatever the file holds: no traceback, in = out + rejected, every reject has a reason.
Damage to a file as a whole (compressed, binary, empty, cut short) is fuzzed in
test_fuzz_files.py: such a file is refused before any row is read, so it has no rows to count.

The model stage is replaced by one that fills the score columns with zeros: the model only
ever sees rows that were tokenized, and what is fuzzed here is everything before it."""

import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import read_jsonl, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MIN_ROWS, MIN_FILES = 500, 50

text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\ud800", "\ufeff", "<|im_start|>assistant\n", "<|im_end|>", "\r\n", "a\rb",
                     "\x1b[2J", "{{ raise_exception('x') }}", "{% generation %}", "Hello there."]),
)
role = st.one_of(st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "", "USER"]),
                 st.lists(st.just("user"), max_size=2), st.dictionaries(st.just("a"), st.integers(), max_size=1),
                 st.integers(), st.none())
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
message = st.one_of(
    st.fixed_dictionaries({"role": role, "content": st.one_of(text, st.integers(), st.none())}),
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": text}),
    json_value,
)
good_conversation = st.lists(st.tuples(text, text), min_size=1, max_size=2).map(
    lambda turns: [m for user, reply in turns for m in ({"role": "user", "content": user or "q"},
                                                         {"role": "assistant", "content": reply or "a"})])
row = st.one_of(
    st.fixed_dictionaries({"messages": good_conversation}, optional={"id": json_value}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}, optional={"id": json_value}),
    st.fixed_dictionaries({"conversations": st.lists(st.fixed_dictionaries({"from": role, "value": text}), max_size=3)}),
    st.fixed_dictionaries({"instruction": st.one_of(text, st.integers()), "output": st.one_of(text, st.none())},
                          optional={"input": text, "system": text}),
    st.fixed_dictionaries({"prompt": st.one_of(text, st.lists(message, max_size=2)), "completion": st.one_of(text, json_value)}),
    json_value,
)
KINDS = ("jsonl", "json", "csv", "parquet")
garbage_line = st.one_of(st.binary(max_size=30), st.sampled_from([b"{", b"[" * 2000, b'{"a": ' + b"9" * 5000 + b"}", b"\x00\x00"]))


def encode_line(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", errors="surrogatepass")


@st.composite
def input_files(draw):
    """(file name, bytes, rows it holds where that is known)."""
    kind = draw(st.sampled_from(KINDS))
    rows = draw(st.lists(row, min_size=14, max_size=20))
    if kind == "jsonl":
        lines = [encode_line(value) for value in rows]
        garbage = draw(st.lists(garbage_line.filter(lambda b: b"\n" not in b and b"\r" not in b and b.strip()), max_size=3))
        lines += garbage
        random.Random(draw(st.integers(0, 99))).shuffle(lines)
        ending = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
        bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
        return "rows.jsonl", bom + ending.join(lines) + ending, len(lines)
    if kind == "json":
        return "rows.json", draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + json.dumps(rows).encode("utf-8", "surrogatepass"), len(rows)
    if kind == "csv":
        buffer = io.StringIO()
        buffer.write("prompt,completion\r\n")
        for value in rows:
            cells = [str(value)[:20].replace("\ud800", "?"), draw(text).replace("\ud800", "?")]
            buffer.write(",".join(json.dumps(cell) for cell in cells) + "\r\n")
        return "rows.csv", buffer.getvalue().encode("utf-8", "surrogatepass"), None
    if kind == "parquet":
        column = draw(st.sampled_from(["messages", "conversations", "prompt"]))
        values = draw(st.sampled_from(["text", "ints", "structs"]))
        if values == "text":
            array = pa.array([json.dumps(value)[:30] for value in rows])
        elif values == "ints":
            array = pa.array(list(range(len(rows))))
        else:
            array = pa.array([[{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a{i}"}] if i % 2 else
                              [{"role": "assistant", "content": "first"}] for i in range(len(rows))])
        sink = io.BytesIO()
        pq.write_table(pa.table({column: array, "completion": pa.array(["x"] * len(rows))}), sink)
        return "rows.parquet", sink.getvalue(), len(rows)


def test_fuzzed_files_never_crash_and_every_row_is_accounted_for(tmp_path_factory, tiny_model_dir, no_model):
    seen = {"files": 0, "rows": 0, "outcomes": {}}

    @settings(max_examples=60, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(input_files(), st.sampled_from([None, "messages", "prompt_completion"]))
    def check(file, fmt):
        name, data, known_rows = file
        folder = tmp_path_factory.mktemp("fuzz")
        path = folder / name
        path.write_bytes(data)
        out = folder / "out"
        args = ["score", path, "-o", out, "--model", tiny_model_dir, "--shard-rows", 4]
        result = run_cli(*args, *(["--format", fmt] if fmt else []), check=False)
        assert "Traceback" not in result.stderr, result.stderr
        seen["files"] += 1
        if result.returncode:
            last = result.stderr.strip().splitlines()[-1]
            assert result.returncode == 1 and last.startswith("error: "), result.stderr
        manifest_path = out / "ftprep.json"
        outcome = "written" if result.returncode == 0 else ("all rejected" if manifest_path.exists() else "refused")
        seen["outcomes"][outcome] = seen["outcomes"].get(outcome, 0) + 1
        if not manifest_path.exists():
            assert not out.exists() or not any(out.iterdir()), "a refused run left files behind"
            return
        counts = json.loads(manifest_path.read_text())["counts"]
        rejects = read_jsonl(out / "rejects.jsonl")
        assert counts["rows_in"] == counts["rows_out"] + counts["rows_rejected"]
        assert len(rejects) == counts["rows_rejected"] and all(reject["reason"] for reject in rejects)
        if known_rows is not None:
            assert counts["rows_in"] == known_rows
        seen["rows"] += counts["rows_in"]

    check()
    print(f"fuzz: {seen['files']} files, {seen['rows']} rows read, outcomes {seen['outcomes']}")
    assert seen["files"] >= MIN_FILES and seen["rows"] >= MIN_ROWS

