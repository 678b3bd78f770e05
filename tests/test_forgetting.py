"""bench/forgetting.py end to end at toy size (tiny random model, a few steps), in both regimes, so the bench cannot rot."""

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


@pytest.mark.parametrize("regime", ["paper", "stress"])
def test_generated_data_is_deterministic_checkable_and_disjoint(bench, regime):
    sizes = (50, 20, 30)
    train, val, test = bench.data.target_splits(regime, sizes, seed=0)
    assert (train, val, test) == bench.data.target_splits(regime, sizes, seed=0)
    assert [len(split) for split in (train, val, test)] == list(sizes)
    questions = [{row["messages"][0]["content"] for row in split} for split in (train, val, test)]
    assert sum(map(len, questions)) == sum(sizes)  # distinct within and across the splits
    for row in train + val + test:  # every reference answer ends with its own final number
        answer = row["messages"][1]["content"]
        assert bench.data.final_number(answer) == row["answer"] and len(answer.split()) > 10
    if regime == "paper":  # the prompt states the answer format the ground truth ends with
        assert all("'Answer: N'" in row["messages"][0]["content"] and row["messages"][1]["content"].endswith(f"Answer: {row['answer']}")
                   for row in train)
    items = bench.data.retention_items(120, seed=3)
    assert len(items) == 120 and len({item["question"] + item["answer"] for item in items}) == 120
    assert all(len(set(item["choices"])) == 4 and item["answer"] in item["choices"] for item in items)
    # The right answer is not always in the same place (a position bias would score above chance).
    assert len({item["choices"].index(item["answer"]) for item in items}) == 4
    assert len(set(bench.data.drift_prompts(120))) == 120


@pytest.mark.parametrize("reply, expected", [
    ("so 3 + 4 = 7 apples. The answer is 7.", 7),
    ("The answer is 1,204", 1204),
    ("She has 12 left, then 15", 15),
    ("The answer is 8. Or maybe 9.", 8),
    ("Tens first: 40 + 20 = 60. Then the ones: 7 + 5 = 12. 60 + 12 = 72.\nAnswer: 72", 72),
    ("47 + 25 = 72, so Answer: 72. Check: 72 - 25 = 47", 72),
    ("no number here", None),
])
def test_final_number(bench, reply, expected):
    assert bench.data.final_number(reply) == expected


def test_paired_intervals_and_verdicts(bench):
    stats = bench.stats
    same = [[1, 0, 1, 0] * 10] * 3
    noise = stats.paired_difference(same, same)
    assert noise["mean"] == noise["low"] == noise["high"] == 0 and stats.direction(noise) == "noise"
    better = stats.paired_difference([[1] * 40] * 3, [[1, 0] * 20] * 3)  # +50 points on every seed
    worse = stats.paired_difference([[1, 0] * 20] * 3, [[1] * 40] * 3)
    assert better["low"] > 0.3 and stats.direction(better) == "more" and stats.direction(worse) == "less"
    # One item of 40 better on one seed of 3 is not a difference.
    one = stats.paired_difference([[1] + [0] * 39, [0] * 40, [0] * 40], [[0] * 40] * 3)
    assert one["low"] <= 0 < one["high"] and stats.direction(one) == "noise"
    assert stats.verdict(target=noise, retention=better) == "keeps more than sft at no loss of target"
    assert stats.verdict(target=worse, retention=better) == "trades target for retention"
    assert stats.verdict(target=better, retention=noise) == "learns more than sft at no loss of retention"
    assert stats.verdict(target=noise, retention=noise) == stats.verdict(target=better, retention=worse) == "no better than sft"
    assert stats.interval_text(noise) == "+0.0 [+0.0, +0.0] (noise)"


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["paper", "stress"])
def test_tiny_run_writes_results_per_epoch_with_verdicts_and_reuses_its_caches(bench, regime, tiny_model_dir, tmp_path, monkeypatch):
    preset = bench.PRESETS[regime, True]
    scale = bench.replace(preset, model=tiny_model_dir, train_rows=8, val_rows=4, test_rows=6, retention_items=6,
                          drift_prompts=4, batch=4, epochs=2, seeds=2, regen_tokens=8, answer_tokens=8, drift_tokens=6,
                          learning_rate=1e-3, warmup_steps=1)
    out = tmp_path / "out"
    results = bench.run(scale, out, log=lambda message: None)

    rows = {row["condition"]: row for row in results["rows"]}
    keep_shared = ["stm-keep-shared"] if regime == "stress" else []  # the stress regime's question only
    assert list(rows) == ["base", "sft", "stm", "stm-22", *keep_shared, "regen", "soft"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["verdicts"] == results["verdicts"] and set(saved["verdicts"]) == {"stm", "stm-22", *keep_shared, "regen", "soft"}
    assert all(verdict in bench.stats.VERDICTS for verdict in saved["verdicts"].values())
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved["base"]["target"] == rows["base"]["target"]["mean"] and saved["base"]["val_target"] is not None
    for name in rows:
        assert f"| {name} |" in results["table"]
    for name in saved["verdicts"]:
        comparison = saved["comparisons"][name]["best"]
        assert f"| {name} |" in results["comparison_table"] and saved["verdicts"][name] in results["comparison_table"]
        for metric in ("target", "retention"):
            assert comparison[metric]["low"] <= comparison[metric]["mean"] <= comparison[metric]["high"]
    # Every epoch measured, on every seed: target, retention and drift per epoch.
    for name, runs in saved["runs"].items():
        assert len(runs) == 2
        for run in runs:
            assert [epoch["epoch"] for epoch in run["epochs"]] == [1, 2]
            assert all({"val_target", "target", "retention", "drift"} <= set(epoch) for epoch in run["epochs"])
            assert len(run["losses"]) == 2 * scale.steps_per_epoch
    assert len(rows["sft"]["per_epoch"]) == 2
    # sft trains every assistant token; a random model finds nearly every token surprising, so STM
    # masks most of them; stm-22 masks the paper's share; soft weights are small.
    assert rows["sft"]["masked_share"] == 0 and rows["stm"]["masked_share"] > 0.5
    assert saved["masked_shares"]["stm-22"] == pytest.approx(0.22, abs=0.03)
    assert rows["stm"]["tokens_trained"] < rows["sft"]["tokens_trained"]
    assert 0 < rows["soft"]["masked_share"] < 1 and rows["soft"]["mean_weight"] < 0.5
    assert results["regen"]["generated_rows"]  # the regen condition really went through ftprep regen
    # Training moved the model: the base model's own answers became less (or more) likely.
    assert rows["sft"]["drift"]["mean"] != rows["base"]["drift"]["mean"]

    def no_training(*args, **kwargs):
        raise AssertionError("a rerun must reuse the cached runs")

    with monkeypatch.context() as patch:
        patch.setattr(bench, "train", no_training)
        again = bench.run(scale, out, log=lambda message: None)
    assert again["table"] == results["table"] and again["verdicts"] == results["verdicts"]


@pytest.mark.slow
def test_the_sweep_trains_plain_sft_per_rate_on_the_cached_data(bench, tiny_model_dir, tmp_path):
    scale = bench.replace(bench.PRESETS["stress", True], model=tiny_model_dir, train_rows=8, val_rows=2, test_rows=4,
                          retention_items=6, drift_prompts=4, seeds=1, answer_tokens=8, drift_tokens=6, learning_rate=1e-3)
    found = bench.sweep(scale, tmp_path / "out", [1e-3, 1e-2], log=lambda message: None)
    assert [row["learning_rate"] for row in found] == [1e-3, 1e-2] and found[0]["drift"] != found[1]["drift"]
    assert json.loads((tmp_path / "out" / "sweep.json").read_text()) == found
