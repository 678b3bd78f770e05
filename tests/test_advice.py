"""Advice on choosing a mask, from scores alone: the threshold table of `ftprep stats`, the curve of
the report, `ftprep mask --dry-run`."""

import json

import numpy as np
import pytest
from conftest import run_cli

import ftprep
from ftprep.stages.mask import TokenView, end_of_turn_tokens, threshold_preview
from ftprep.stages.mask_advice import ADVICE_THRESHOLDS, ThresholdCurve, shard_candidate_scores

EOT = 2


def random_shard(seed, rows=30):
    """Rows of random tokens: a prompt, an assistant turn ending in EOT, perplexities from 1 to ~1000."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 20, rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ids = rng.integers(3, 50, offsets[-1])
    assistant = np.zeros(offsets[-1], dtype=bool)
    for start, end in zip(offsets[:-1], offsets[1:]):
        assistant[start + 2:end] = True
        ids[end - 1] = EOT
    logprobs = -rng.exponential(1.5, offsets[-1]).astype(np.float32)
    logprobs[~assistant] = np.nan
    logprobs[rng.random(offsets[-1]) < 0.02] = np.nan  # a few assistant tokens left unscored
    return offsets, ids, assistant, logprobs


def view_of(offsets, ids, assistant, logprobs):
    return TokenView(offsets=offsets, input_ids=ids, assistant=assistant, logprobs=logprobs,
                     end_of_turn=end_of_turn_tokens(ids, assistant, [EOT]))


def test_the_table_counts_what_the_mask_would_mask_over_several_shards():
    shards = [random_shard(seed) for seed in range(3)]
    curve = ThresholdCurve.of([shard_candidate_scores(view_of(*shard)) for shard in shards],
                              sum(int(shard[2].sum()) for shard in shards))
    for threshold in (*ADVICE_THRESHOLDS, 1.0, 1e6):
        masked = [threshold_preview(*shard, [EOT], threshold) for shard in shards]
        rows = sum(int(np.add.reduceat(m, shard[0][:-1]).astype(bool).sum()) for m, shard in zip(masked, shards))
        assert curve.masked_tokens([threshold])[0] == sum(int(m.sum()) for m in masked)
        assert curve.rows_masked([threshold])[0] == rows
    assert curve.rows == 90 and curve.assistant_tokens == sum(int(shard[2].sum()) for shard in shards)


def test_the_threshold_for_a_share_masks_that_share_of_the_candidates():
    shard = random_shard(7, rows=200)
    curve = ThresholdCurve.of([shard_candidate_scores(view_of(*shard))], int(shard[2].sum()))
    for share in (0.1, 0.2, 0.3):
        threshold = curve.threshold_for_share(share)
        # Continuous perplexities: no ties, so exactly floor(share x candidates) are above it.
        assert curve.masked_tokens([threshold])[0] == int(np.floor(share * curve.candidates))
    assert curve.threshold_for_share(1e-9) is None and curve.threshold_for_share(1.0) is None
    advice = curve.advice()
    assert [entry["threshold"] for entry in advice["thresholds"]] == list(ADVICE_THRESHOLDS)
    assert json.loads(json.dumps(advice)) == advice  # what --json prints, as it is


@pytest.mark.slow
def test_stats_on_a_scored_folder_prints_the_threshold_table(scored_sample, tmp_path):
    text = run_cli("stats", scored_sample).stdout
    assert "rows with a masked token" in text and "end-of-turn tokens stay supervised" in text
    section = text.split("would mask")[1].split("the T that masks")[0].splitlines()[2:]
    table = {line.split()[0]: line.split() for line in section}
    assert list(table) == ["1.5", "2", "2.5", "3", "5", "10", "20"] and table["2.5"][1] == "(STM)"
    assert "perplexity of assistant tokens:" in text and "--threshold" in text.split("mask candidates")[1]
    advice = json.loads(run_cli("stats", scored_sample, "--json").stdout)["threshold_advice"]
    at_stm = next(entry for entry in advice["thresholds"] if entry["threshold"] == 2.5)
    assert table["2.5"][2] == f"{at_stm['masked_tokens']:,}"
    assert ftprep.stats(scored_sample)["threshold_advice"] == advice  # the Python API has the same
    # What ftprep mask then masks at those thresholds (its own rule) is what the table said.
    run_cli("mask", scored_sample, "-o", tmp_path / "train")
    assert json.loads((tmp_path / "train" / "stats.json").read_text())["masked_tokens"] == at_stm["masked_tokens"]
    tau = next(entry for entry in advice["thresholds_for_shares"] if entry["share_of_candidates"] == 0.2)["threshold"]
    run_cli("mask", scored_sample, "-o", tmp_path / "q", "--threshold", tau)
    masked = json.loads((tmp_path / "q" / "stats.json").read_text())["masked_tokens"]
    assert masked == int(np.floor(0.2 * advice["mask_candidates"]))


@pytest.mark.slow
def test_the_report_of_a_scored_folder_draws_the_curve_with_the_papers_band(scored_sample, tmp_path):
    page = tmp_path / "scored.html"
    run_cli("report", scored_sample, "-o", page)
    text = page.read_text()
    assert '<polyline class="curve"' in text and 'class="band"' in text
    assert "the paper: 21%-24% masked at 2.5" in text and "STM 2.5: " in text and "log scale" in text
