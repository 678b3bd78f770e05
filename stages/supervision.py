"""Which tokens a training row supervises: the one rule that mask stats, `inspect`, `report` and
the dataset card all count by.

- supervised: an assistant token with a loss (its label kept and a weight above 0);
- masked: an assistant token without one, because its label is -100 or its weight is 0 (soft
  weights underflow to exactly 0);
- down-weighted: supervised, with a weight below LOW_WEIGHT (it still trains, so it is not masked);
- prompt: every other token.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100  # the label of a token without loss, as every trainer reads it
LOW_WEIGHT = 0.5
KINDS = ("prompt", "kept", "masked", "low")  # what a token is in the views, in token_kinds' numbering


def training_labels(input_ids: np.ndarray, assistant: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Labels as trainers read them: the token on unmasked assistant tokens, IGNORE_INDEX elsewhere (not shifted)."""
    return np.where(assistant & ~masked, input_ids, IGNORE_INDEX).astype(np.int32)


def supervised_tokens(assistant: np.ndarray, masked: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Tokens that carry a loss: a kept label and a weight above 0."""
    return assistant & ~masked & (weights > 0)


def tokens_without_loss(assistant: np.ndarray, labels: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """What "masked" means in stats, report, card and inspect alike: assistant tokens that get
    no loss, because their label is -100 or their weight is 0."""
    no_loss = labels == IGNORE_INDEX
    if weights is not None:
        no_loss |= weights == 0
    return assistant & no_loss


def down_weighted(assistant: np.ndarray, masked: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Tokens trained on with a weight below LOW_WEIGHT (none without weights)."""
    if weights is None:
        return np.zeros(len(assistant), dtype=bool)
    return assistant & ~masked & (weights < LOW_WEIGHT)


def token_kinds(assistant: np.ndarray, masked: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Per token, its index in KINDS: masked first, then down-weighted, kept, prompt."""
    return np.select([masked, low, assistant], [KINDS.index("masked"), KINDS.index("low"), KINDS.index("kept")],
                     default=KINDS.index("prompt"))
