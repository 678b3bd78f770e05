"""Train on ftprep's per-token weights with HF `Trainer` or TRL's `SFTTrainer`.

No mainstream trainer reads a weight column, so this module is what a user adds:

    from pipeline.trainer import TokenWeightCollator, with_token_weights
    from trl import SFTConfig, SFTTrainer

    trainer = with_token_weights(SFTTrainer)(
        model=model,
        args=SFTConfig(output_dir="out", remove_unused_columns=False),
        train_dataset=load_from_disk("train"),          # ftprep mask --strategy soft
        data_collator=TokenWeightCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )

The loss is the weighted token cross-entropy, normalized by the sum of the weights of the
supervised tokens: sum_t w_t * CE_t / sum_t w_t over tokens whose label is not -100.

Half fine-tuning (`ftprep hft-plan`): `apply_hft_plan(model, "plan.json")` before building the
trainer freezes what the plan freezes; HF Trainer and TRL then optimize only the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline.errors import FtprepError

IGNORE_INDEX = -100


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


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_t w_t * CE_t / sum_t w_t over supervised tokens; labels are not shifted (HF convention)."""
    logits, labels, weights = logits[:, :-1], labels[:, 1:], weights[:, 1:]
    supervised = labels != IGNORE_INDEX
    weights = torch.where(supervised, weights.to(torch.float32), torch.zeros_like(weights, dtype=torch.float32))
    token_loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.masked_fill(~supervised, 0).reshape(-1),
        reduction="none",
    ).view_as(weights)
    # A batch whose weights are all zero contributes a zero loss, not a NaN.
    return (token_loss * weights).sum() / weights.sum().clamp_min(torch.finfo(torch.float32).tiny)


def weighted_loss(outputs, labels: torch.Tensor, num_items_in_batch=None, loss_weights: torch.Tensor | None = None):
    """`compute_loss_func` for HF Trainer: weighted when `loss_weights` is given, else plain."""
    if loss_weights is None:
        loss_weights = (labels != IGNORE_INDEX).float()
    return weighted_cross_entropy(outputs.logits, labels, loss_weights)


def with_token_weights(trainer_class):
    """A subclass of `trainer_class` (Trainer, SFTTrainer...) whose loss reads `loss_weights`."""

    class TokenWeightedTrainer(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("loss_weights", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_loss(outputs, labels, num_items_in_batch, weights)
            return (loss, outputs) if return_outputs else loss

    TokenWeightedTrainer.__name__ = f"TokenWeighted{trainer_class.__name__}"
    return TokenWeightedTrainer


def apply_hft_plan(model: torch.nn.Module, plan: dict | str | Path) -> int:
    """Set requires_grad as an HFT plan (or its JSON file) says; return the trainable parameter count.

    Call it before building the trainer: HF Trainer and TRL put only parameters that require a
    gradient into the optimizer, and a frozen parameter gets no gradient, so even an optimizer
    over all parameters (weight decay included) leaves it as it is.
    """
    if not isinstance(plan, dict):
        plan = json.loads(Path(plan).read_text())
    named = dict(model.named_parameters())
    planned = set(plan["trainable"]) | set(plan["frozen"])
    if planned != named.keys():
        not_in_model, not_in_plan = sorted(planned - named.keys()), sorted(named.keys() - planned)
        example = f"e.g. {not_in_model[0]} is not in the model" if not_in_model else f"e.g. {not_in_plan[0]} is not in the plan"
        raise FtprepError(f"the HFT plan does not fit this model: {len(not_in_model)} plan parameters are not in the model "
                          f"and {len(not_in_plan)} model parameters are not in the plan ({example}); "
                          "make the plan with ftprep hft-plan --model for this model")
    trainable = set(plan["trainable"])
    for name, param in named.items():
        param.requires_grad_(name in trainable)
    return sum(param.numel() for name, param in named.items() if name in trainable)
