"""Per-token loss weights (`ftprep mask --strategy soft`): the collator, the weighted cross-entropy
normalized by the supervised weight sum, and `with_token_weights(Trainer)`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftprep.stages.supervision import IGNORE_INDEX
from ftprep.train.accumulation import exact_under_accumulation


@dataclass
class TokenWeightCollator:
    """Right-pads input_ids, attention_mask, labels and loss_weights into tensors.

    Padding gets label -100 and weight 0, so it never counts. Rows without loss_weights get
    weight 1 on every supervised token (plain SFT).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), longest), dtype=torch.long),
            "labels": torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long),
            "loss_weights": torch.zeros((len(rows), longest), dtype=torch.float32),
        }
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            labels = torch.as_tensor(row["labels"], dtype=torch.long)
            batch["input_ids"][index, :length] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            batch["attention_mask"][index, :length] = torch.as_tensor(row.get("attention_mask", [1] * length), dtype=torch.long)
            batch["labels"][index, :length] = labels
            weights = row.get("loss_weights")
            batch["loss_weights"][index, :length] = (
                torch.as_tensor(weights, dtype=torch.float32) if weights is not None else (labels != IGNORE_INDEX).float()
            )
        return batch


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                           total: torch.Tensor | float | None = None) -> torch.Tensor:
    """sum_t w_t * CE_t / total over supervised tokens; labels are not shifted (HF convention).

    `total` defaults to this batch's sum_t w_t; under gradient accumulation pass the weight sum of the
    whole accumulated batch (`supervised_weight_sum` over its micro-batches), so that the micro-batch
    losses add up to the loss of one big batch."""
    logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
    supervised = labels != IGNORE_INDEX
    weights = torch.where(supervised, weights.to(torch.float32), torch.zeros_like(weights, dtype=torch.float32))
    token_loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.masked_fill(~supervised, 0).reshape(-1),
        reduction="none",
    ).view_as(weights)
    if total is None:
        total = weights.sum()
    # A batch whose weights are all zero contributes a zero loss, not a NaN.
    return (token_loss * weights).sum() / torch.as_tensor(total, dtype=torch.float32).clamp_min(torch.finfo(torch.float32).tiny)


def supervised_weight_sum(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum_t w_t over the tokens a collated batch supervises (what weighted_cross_entropy divides by);
    without `loss_weights`, the count of supervised tokens."""
    supervised = batch["labels"][:, 1:] != IGNORE_INDEX
    weights = batch.get("loss_weights")
    if weights is None:
        return supervised.sum().to(torch.float32)
    return torch.where(supervised, weights[:, 1:].to(torch.float32), 0.0).sum()


def weighted_loss(outputs, labels: torch.Tensor, num_items_in_batch=None, loss_weights: torch.Tensor | None = None):
    """`compute_loss_func` for HF Trainer: weighted when `loss_weights` is given, else plain.

    `num_items_in_batch` is the normalizer: transformers passes the count of supervised tokens of the
    whole accumulated batch, which makes the plain loss exact under gradient accumulation; with
    `loss_weights`, pass the accumulated weight sum (`supervised_weight_sum`). None: this batch's own."""
    if loss_weights is None:
        loss_weights = (labels != IGNORE_INDEX).float()
    return weighted_cross_entropy(outputs.logits, labels, loss_weights, num_items_in_batch)


def with_token_weights(trainer_class):
    """A subclass of `trainer_class` (Trainer, SFTTrainer...) whose loss reads `loss_weights`,
    normalized by the weight sum of the whole accumulated batch."""

    class TokenWeightedTrainer(exact_under_accumulation(trainer_class, supervised_weight_sum)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("loss_weights", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_loss(outputs, labels, self.accumulated_count(model), weights)
            loss = self.across_processes(loss, model)
            return (loss, outputs) if return_outputs else loss

    TokenWeightedTrainer.__name__ = f"TokenWeighted{trainer_class.__name__}"
    return TokenWeightedTrainer
