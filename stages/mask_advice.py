"""Advice on choosing a threshold, from scores alone: what share of the assistant tokens and of the
rows `ftprep mask --threshold T` would mask for a range of T, and which T masks a given share.

By the mask's own rule (stages.mask, the threshold strategy): a candidate (an assistant token,
end-of-turn tokens aside, as --keep-eos does by default) is masked when its perplexity is above T;
an unscored one (NaN) never is. Each shard gives its candidates' perplexities and each row's
highest; sorted once, every threshold is a binary search, not a pass over the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftprep.stages.mask import TokenView, mask_candidates
from ftprep.stages.strategies.threshold import STM_THRESHOLD

ADVICE_THRESHOLDS = (1.5, 2.0, STM_THRESHOLD, 3.0, 5.0, 10.0, 20.0)
ADVICE_SHARES = (0.1, 0.2, 0.3)  # the shares of the candidates a threshold is looked for


def shard_candidate_scores(view: TokenView) -> tuple[np.ndarray, np.ndarray]:
    """One shard's candidates' perplexities (NaN as -inf: above no threshold) and, per row, the
    highest of them (-inf for a row without candidates): a row has a masked token at T when it is above T."""
    candidates = mask_candidates(view, keep_eos=True)
    ppl = np.nan_to_num(view.perplexity[candidates].astype(np.float64), nan=-np.inf)
    row_max = np.full(len(view.offsets) - 1, -np.inf)
    np.maximum.at(row_max, view.row_of_token[candidates], ppl)
    return ppl, row_max


@dataclass(frozen=True)
class ThresholdCurve:
    perplexity: np.ndarray  # every candidate's, sorted
    row_max: np.ndarray  # every row's highest candidate perplexity, sorted
    assistant_tokens: int

    @classmethod
    def of(cls, shards: list[tuple[np.ndarray, np.ndarray]], assistant_tokens: int) -> "ThresholdCurve":
        """From shard_candidate_scores of every shard."""
        ppl = np.sort(np.concatenate([part for part, _ in shards])) if shards else np.zeros(0)
        row_max = np.sort(np.concatenate([part for _, part in shards])) if shards else np.zeros(0)
        return cls(ppl, row_max, int(assistant_tokens))

    @property
    def candidates(self) -> int:
        return len(self.perplexity)

    @property
    def rows(self) -> int:
        return len(self.row_max)

    def masked_tokens(self, thresholds) -> np.ndarray:
        """Candidates above each threshold."""
        return self.candidates - np.searchsorted(self.perplexity, np.asarray(thresholds, dtype=np.float64), side="right")

    def masked_share(self, thresholds) -> np.ndarray:
        """Masked tokens as a share of the assistant tokens (what ftprep mask's masked_share says)."""
        return self.masked_tokens(thresholds) / max(self.assistant_tokens, 1)

    def rows_masked(self, thresholds) -> np.ndarray:
        """Rows with at least one masked token at each threshold."""
        return self.rows - np.searchsorted(self.row_max, np.asarray(thresholds, dtype=np.float64), side="right")

    def threshold_for_share(self, share: float) -> float | None:
        """The threshold that masks floor(share x candidates) of them, the highest-perplexity ones
        (fewer where perplexities tie at it): the highest candidate perplexity left unmasked. None
        where that share is no token, or every one."""
        to_mask = int(np.floor(share * self.candidates))
        if to_mask == 0 or to_mask >= self.candidates or not np.isfinite(self.perplexity[self.candidates - to_mask - 1]):
            return None
        return float(self.perplexity[self.candidates - to_mask - 1])

    def advice(self, thresholds=ADVICE_THRESHOLDS, shares=ADVICE_SHARES) -> dict:
        """The table `ftprep stats` prints and its --json holds."""
        tokens, rows = self.masked_tokens(thresholds), self.rows_masked(thresholds)
        return {
            "assistant_tokens": self.assistant_tokens,
            "mask_candidates": self.candidates,
            "rows": self.rows,
            "thresholds": [{"threshold": float(threshold), "masked_tokens": int(count),
                            "masked_share": float(count / max(self.assistant_tokens, 1)),
                            "rows_with_masked_tokens": int(row_count), "rows_share": float(row_count / max(self.rows, 1))}
                           for threshold, count, row_count in zip(thresholds, tokens, rows)],
            "thresholds_for_shares": [{"share_of_candidates": share, "threshold": self.threshold_for_share(share)}
                                      for share in shares],
        }
