"""`ftprep stats`: a run's stats.json as a table, histograms drawn as bars; for a scored dataset,
with the advice on choosing a threshold that its scores give (stages.mask_advice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftprep.shared_phrases import KEPT, REMOVED, WARNING, notes, shared_tokens_stats
from ftprep.stages.strategies.threshold import STM_THRESHOLD

ADVICE = "threshold_advice"
HISTOGRAM = "perplexity_histogram"
# Shown in sections of their own, after the numbers.
SECTIONS = (HISTOGRAM, ADVICE, REMOVED, WARNING, KEPT)


def scored_stats(folder: Path, stats: dict) -> dict:
    """A scored dataset's stats.json with what its scores say about a mask: the perplexity
    histogram, the threshold advice and what the paper's threshold would remove of what the rows
    share. One pass over the shards, numpy over their flat columns."""
    from ftprep.manifest import open_run
    from ftprep.models import load_tokenizer
    from ftprep.stages.mask import TokenView, mask_candidates, perplexity_histogram
    from ftprep.stages.mask_advice import ThresholdCurve, shard_candidate_scores
    from ftprep.stages.shared_tokens import shared_token_counts, what_to_do
    from ftprep.stages.strategies import strategy_named
    from ftprep.writers import merge_counters, read_shards

    manifest = open_run(folder, stages=("score",))
    end_of_turn_ids = manifest.tokenizer.end_of_turn_ids
    scores, histograms, counts, assistant, rows = [], [], [], 0, 0
    for table in read_shards(folder):
        view = TokenView.of(table.select(["input_ids", "assistant_mask", "logprobs"]), end_of_turn_ids)
        scores.append(shard_candidate_scores(view))
        assistant += int(view.assistant.sum())
        rows += table.num_rows
        histograms.append(perplexity_histogram(view.perplexity[view.assistant & ~np.isnan(view.logprobs)]))
        candidates = mask_candidates(view, keep_eos=True)
        stm = candidates & (view.perplexity > STM_THRESHOLD)  # the threshold strategy's rule at its default
        counts.append(shared_token_counts(view.input_ids, candidates, stm, view.row_of_token, table.num_rows))
    stats = {**stats, HISTOGRAM: merge_counters(histograms), ADVICE: ThresholdCurve.of(scores, assistant).advice()}
    threshold = strategy_named("threshold")
    stats.update(shared_tokens_stats(merge_counters(counts), rows, lambda: load_tokenizer(manifest.model.path),
                                     f"--threshold {STM_THRESHOLD:g} (STM) would remove", what_to_do(threshold.looser, True)))
    return stats


def format_stats(stats: dict) -> str:
    lines = []
    for key, value in stats.items():
        if isinstance(value, (dict, list)) or key in SECTIONS:
            continue
        lines.append(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    for key, value in stats.items():
        if key == HISTOGRAM:
            total = max(sum(value.values()), 1)
            lines.append("perplexity of assistant tokens:")
            for label, count in value.items():
                lines.append(f"{label:>12} {count:>8} {'#' * round(40 * count / total)}")
        elif isinstance(value, dict) and value and key not in SECTIONS:
            lines.append(f"{key}:")
            lines.extend(f"{name:>40}: {count}" for name, count in value.items())
    if ADVICE in stats:
        lines.extend(advice_lines(stats[ADVICE]))
    return "\n".join(lines + notes(stats))


def advice_lines(advice: dict) -> list[str]:
    """The threshold table: per threshold, the tokens and rows ftprep mask --threshold would mask."""
    lines = [f"ftprep mask --threshold T would mask (assistant tokens above perplexity T; end-of-turn tokens stay "
             f"supervised, as --keep-eos does); of {advice['assistant_tokens']:,} assistant tokens in {advice['rows']:,} rows:",
             f"{'T':>12} {'tokens masked':>14} {'share':>7} {'rows with a masked token':>25} {'share':>7}"]
    for entry in advice["thresholds"]:
        name = f"{entry['threshold']:g}" + (" (STM)" if entry["threshold"] == STM_THRESHOLD else "")
        lines.append(f"{name:>12} {entry['masked_tokens']:>14,} {entry['masked_share']:>7.1%} "
                     f"{entry['rows_with_masked_tokens']:>25,} {entry['rows_share']:>7.1%}")
    lines.append(f"the T that masks a share of the {advice['mask_candidates']:,} mask candidates (assistant tokens "
                 "but end-of-turn), as --strategy quantile --scope dataset would:")
    for entry in advice["thresholds_for_shares"]:
        found = f"{entry['threshold']:.4g}" if entry["threshold"] is not None else "none (too few tokens)"
        lines.append(f"{entry['share_of_candidates']:>12.0%}: --threshold {found}")
    return lines

