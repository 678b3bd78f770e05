"""Each mask strategy masks exactly what its rule says, on the real scored sample."""

import json

import numpy as np
import pytest
from conftest import flat, load_table, mask_folder

from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import IGNORE_INDEX

pytestmark = pytest.mark.slow  # every test here runs the model

EOT = 2  # <|im_end|> in SmolLM2


def mask(scored, tmp_path, name="train", **settings):
    return mask_folder(scored, tmp_path / name, **settings)


@pytest.fixture(scope="module")
def scores(scored_sample):
    table = load_table(scored_sample)
    ids = flat(table, "input_ids")
    assistant = flat(table, "assistant_mask").astype(bool)
    ppl = np.exp(-flat(table, "logprobs").astype(np.float64))
    rows = np.repeat(np.arange(table.num_rows), [len(x) for x in table.column("input_ids").to_pylist()])
    return ids, assistant, ppl, rows


def training_arrays(folder):
    table = load_table(folder)
    return table, flat(table, "labels"), flat(table, "input_ids")


def test_threshold_masks_assistant_tokens_above_2_5(scored_sample, scores, tmp_path):
    ids, assistant, ppl, _ = scores
    folder = mask(scored_sample, tmp_path)
    table, labels, out_ids = training_arrays(folder)
    assert table.column_names == ["input_ids", "attention_mask", "labels"]
    np.testing.assert_array_equal(out_ids, ids)
    expected_masked = assistant & (ppl > 2.5) & (ids != EOT)
    expected_labels = np.where(assistant & ~expected_masked, ids, IGNORE_INDEX)
    np.testing.assert_array_equal(labels, expected_labels)
    assert (flat(table, "attention_mask") == 1).all()
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["masked_tokens"] == expected_masked.sum()
    assert stats["assistant_tokens"] == assistant.sum()
    assert stats["masked_share"] == pytest.approx(expected_masked.sum() / assistant.sum())
    assert sum(stats["perplexity_histogram"].values()) == assistant.sum() - 0
    assert stats["rows_in"] == stats["rows_out"] + stats["rows_rejected"] == 40
    print(f"threshold 2.5 on the sample: {stats['masked_share']:.1%} of assistant tokens masked")


def test_no_keep_eos_masks_end_of_turn_tokens_too(scored_sample, scores, tmp_path):
    ids, assistant, ppl, _ = scores
    _, labels, _ = training_arrays(mask(scored_sample, tmp_path, threshold=1.001, keep_eos=False, min_kept=0))
    eot = assistant & (ids == EOT)
    np.testing.assert_array_equal(labels[eot] == IGNORE_INDEX, ppl[eot] > 1.001)
    _, kept, _ = training_arrays(mask(scored_sample, tmp_path, "kept", threshold=1.001, keep_eos=True, min_kept=0))
    assert (kept[eot] == EOT).all()


def test_none_labels_every_assistant_token(scored_sample, scores, tmp_path):
    ids, assistant, _, _ = scores
    _, labels, _ = training_arrays(mask(scored_sample, tmp_path, strategy="none"))
    np.testing.assert_array_equal(labels, np.where(assistant, ids, IGNORE_INDEX))


def test_quantile_per_sample_masks_the_top_share_of_each_row(scored_sample, scores, tmp_path):
    ids, assistant, ppl, rows = scores
    _, labels, _ = training_arrays(mask(scored_sample, tmp_path, strategy="quantile", quantile=0.3, min_kept=0))
    candidates = assistant & (ids != EOT)
    masked = candidates & (labels == IGNORE_INDEX)
    for row in np.unique(rows):
        in_row = rows == row
        n = candidates[in_row].sum()
        assert masked[in_row].sum() == int(np.floor(0.3 * n))
        if masked[in_row].any() and (candidates[in_row] & ~masked[in_row]).any():
            assert ppl[in_row & masked].min() >= ppl[in_row & candidates & ~masked].max()


def test_quantile_over_the_dataset_masks_the_top_share_overall(scored_sample, scores, tmp_path):
    ids, assistant, ppl, _ = scores
    folder = mask(scored_sample, tmp_path, strategy="quantile", quantile=0.25, scope="dataset", min_kept=0)
    _, labels, _ = training_arrays(folder)
    candidates = assistant & (ids != EOT)
    masked = candidates & (labels == IGNORE_INDEX)
    assert masked.sum() == int(np.floor(0.25 * candidates.sum()))
    assert ppl[masked].min() >= ppl[candidates & ~masked].max()


@pytest.mark.parametrize("weight_fn", ["gauss", "prob"])
def test_soft_weights_follow_the_formula(scored_sample, scores, tmp_path, weight_fn):
    ids, assistant, ppl, _ = scores
    folder = mask(scored_sample, tmp_path, strategy="soft", weight_fn=weight_fn, sigma=0.75, alpha=0.5, min_weight=0.05)
    table, labels, _ = training_arrays(folder)
    weights = flat(table, "loss_weights")
    assert table.column_names[-1] == "loss_weights"
    np.testing.assert_array_equal(labels, np.where(assistant, ids, IGNORE_INDEX))  # soft keeps every label
    candidates = assistant & (ids != EOT)
    curve = np.exp(-(((ppl - 1) / 0.75) ** 2)) if weight_fn == "gauss" else ppl ** -0.5
    np.testing.assert_allclose(weights[candidates], np.maximum(curve[candidates], 0.05), rtol=1e-5)
    assert (weights[assistant & (ids == EOT)] == 1).all()
    assert (weights[~assistant] == 0).all()


def test_masked_means_no_loss_and_soft_weights_get_quantiles(scored_sample, scores, tmp_path):
    """One meaning of masked: label -100 or weight 0. Soft gauss weights underflow to exactly 0
    for high-perplexity tokens: those count as masked, and the weights' spread is reported."""
    _, assistant, _, _ = scores
    folder = mask(scored_sample, tmp_path, strategy="soft", sigma=0.3)  # narrow: many weights reach 0
    table, labels, _ = training_arrays(folder)
    weights = flat(table, "loss_weights")
    stats = json.loads((folder / "stats.json").read_text())
    zero = assistant & (weights == 0)
    assert zero.sum() > 0 and (labels[zero] != IGNORE_INDEX).all()  # labels kept, yet no loss
    assert stats["masked_tokens"] == stats["zero_weight_tokens"] == zero.sum()
    assert stats["masked_share"] == pytest.approx(zero.sum() / assistant.sum())
    expected = np.quantile(weights[assistant], [0.05, 0.25, 0.5, 0.75, 0.95], method="inverted_cdf")
    np.testing.assert_allclose(list(stats["weight_quantiles"].values()), expected, atol=0.0005)
    assert list(stats["weight_quantiles"]) == ["p5", "p25", "p50", "p75", "p95"] and "weight_histogram" not in stats
    hard = json.loads((mask(scored_sample, tmp_path, "hard") / "stats.json").read_text())
    assert not {"weight_quantiles", "zero_weight_tokens", "mean_weight"} & set(hard)  # weights only where they are made


def test_min_kept_rejects_rows_with_too_few_supervised_tokens(scored_sample, scores, tmp_path):
    ids, assistant, ppl, rows = scores
    folder = mask(scored_sample, tmp_path, threshold=1.5, min_kept=20)
    supervised = assistant & ((ppl <= 1.5) | (ids == EOT))
    per_row = np.bincount(rows[supervised], minlength=40)
    rejects = [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == (per_row < 20).sum() > 0
    assert all("--min-kept 20" in reject["reason"] for reject in rejects)
    table, _, _ = training_arrays(folder)
    assert table.num_rows + len(rejects) == 40


def test_weights_flag_writes_unit_weights_for_hard_strategies(scored_sample, tmp_path):
    table, labels, _ = training_arrays(mask(scored_sample, tmp_path, weights=True))
    np.testing.assert_array_equal(flat(table, "loss_weights"), (labels != IGNORE_INDEX).astype(np.float32))


def test_rejects_name_the_scored_row(scored_sample, tmp_path):
    folder = mask(scored_sample, tmp_path, threshold=1.5, min_kept=20)
    scored_ids = load_table(scored_sample).column("id").to_pylist()
    for reject in (json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()):
        assert scored_ids[reject["index"]] == reject["id"] and reject["stage"] == "mask"


@pytest.mark.parametrize("target", ["trl", "axolotl", "llama-factory"])
def test_trainer_targets_get_exactly_their_columns(scored_sample, tmp_path, target):
    table, _, _ = training_arrays(mask(scored_sample, tmp_path, target=target))
    assert table.column_names == ["input_ids", "attention_mask", "labels"]
    with pytest.raises(FtprepError, match="cannot read loss_weights"):
        mask(scored_sample, tmp_path, "soft", strategy="soft", target=target)


def test_hf_target_keeps_loss_weights(scored_sample, tmp_path):
    table, _, _ = training_arrays(mask(scored_sample, tmp_path, strategy="soft", target="hf"))
    assert table.column_names == ["input_ids", "attention_mask", "labels", "loss_weights"]


def test_training_rows_map_back_to_their_scored_rows(scored_sample, tmp_path):
    from ftprep.views.inspect_row import rows_mask_rejected, scored_row_for_training_row

    folder = mask(scored_sample, tmp_path, threshold=1.5, min_kept=20)
    scored_ids = load_table(scored_sample).column("id").to_pylist()
    kept = [index for index in range(len(scored_ids)) if index not in rows_mask_rejected(folder)]
    assert len(kept) < len(scored_ids)
    for row in (0, len(kept) // 2, len(kept) - 1):
        assert scored_row_for_training_row(folder, scored_sample, row)["id"] == scored_ids[kept[row]]
