"""bench/forgetting.py end to end at toy size (tiny random model, a few steps), so the bench cannot rot."""

import importlib.util
import json
import sys

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("forgetting_bench", REPO / "bench" / "forgetting.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_generated_data_is_deterministic_checkable_and_disjoint(bench):
    scale = bench.Scale(train_rows=50, test_rows=20)
    train, test = bench.split_target(scale)
    assert (train, test) == bench.split_target(scale)
    assert len(train) == 50 and len(test) == 20
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}
    for row in train + test:  # every reference answer reasons in words and ends with its own final number
        answer = row["messages"][1]["content"]
        assert bench.final_number(answer) == row["answer"] and len(answer.split()) > 15
    items = bench.retention_items(120, seed=3)
    assert len(items) == 120 and len({item["question"] + item["answer"] for item in items}) == 120
    assert all(len(set(item["choices"])) == 4 and item["answer"] in item["choices"] for item in items)
    # The right answer is not always in the same place (a position bias would score above chance).
    assert len({item["choices"].index(item["answer"]) for item in items}) == 4
    assert len(set(bench.drift_prompts(120))) == 120


@pytest.mark.parametrize("reply, expected", [
    ("so 3 + 4 = 7 apples. The answer is 7.", 7),
    ("The answer is 1,204", 1204),
    ("She has 12 left, then 15", 15),
    ("The answer is 8. Or maybe 9.", 8),
    ("no number here", None),
])
def test_final_number(bench, reply, expected):
    assert bench.final_number(reply) == expected


@pytest.mark.slow
def test_tiny_run_writes_the_table_and_reuses_its_caches(bench, tiny_model_dir, tmp_path, monkeypatch):
    scale = bench.Scale(model=tiny_model_dir, train_rows=8, test_rows=4, retention_items=6, drift_prompts=4, steps=2,
                        batch=4, seeds=1, regen_n=1, regen_tokens=8, answer_tokens=8, drift_tokens=6, learning_rate=1e-3)
    results = bench.run(scale, tmp_path / "out", log=lambda message: None)

    rows = {row["condition"]: row for row in results["rows"]}
    assert list(rows) == ["base", "sft", "stm", "regen", "soft"]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["condition"] for row in saved["rows"]] == list(rows)
    assert (tmp_path / "out" / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in rows:
        assert f"| {name} |" in results["table"]
    # sft trains every assistant token; a random model finds nearly every token surprising, so STM
    # masks most of them and soft weights are small.
    assert rows["sft"]["masked_share"] == 0 and rows["stm"]["masked_share"] > 0.5
    assert rows["stm"]["tokens_trained"] < rows["sft"]["tokens_trained"]
    # soft keeps every label but weighs it; tokens of weight 0 count as masked (no loss), as in
    # ftprep's stats, and not as trained.
    assert 0 < rows["soft"]["masked_share"] < 1 and rows["soft"]["mean_weight"] < 0.5
    assert rows["soft"]["weight_sum"] <= rows["soft"]["tokens_trained"] <= rows["sft"]["tokens_trained"]
    assert results["regen"]["generated_rows"]  # the regen condition really went through ftprep regen
    # Training moved the model: the base model's own answers became less (or more) likely.
    assert rows["sft"]["drift"]["mean"] != rows["base"]["drift"]["mean"]
    assert all(len(run["losses"]) == scale.steps for runs in results["runs"].values() for run in runs)

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must reuse the cached runs")

    with monkeypatch.context() as patch:
        patch.setattr(bench, "train", no_training)
        again = bench.run(scale, tmp_path / "out", log=lambda message: None)
    assert again["table"] == results["table"]

    # The learning-rate sweep: plain SFT per rate, on the same cached data (the first rate is cached too).
    found = bench.sweep(scale, tmp_path / "out", [scale.learning_rate, 1e-2], log=lambda message: None)
    assert [row["learning_rate"] for row in found] == [scale.learning_rate, 1e-2]
    assert found[0]["drift"] == rows["sft"]["drift"]["mean"] != found[1]["drift"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == found
