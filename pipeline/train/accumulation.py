"""Losses that stay exact under gradient accumulation: what the three ftprep trainers share."""

from __future__ import annotations

import torch


def exact_under_accumulation(trainer_class, count):
    """A subclass of `trainer_class` that knows, before each optimizer step, `count` (a float tensor per
    collated micro-batch: what the loss divides by) summed over the step's micro-batches, and over
    the processes when `average_tokens_across_devices`: `self.accumulated_count`.

    A loss that divides by it is already scaled for accumulation, which the class says to transformers
    (`loss_is_scaled_for_ga`; older releases decide from `model_accepts_loss_kwargs`). Outside training
    (evaluation) `accumulated_count` is None and the loss normalizes over its own batch."""

    class ExactUnderAccumulation(trainer_class):
        loss_is_scaled_for_ga = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True  # transformers < 5.x: "the loss is already scaled"
            self.ftprep_count: torch.Tensor | None = None

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
            total = sum((count(batch).to(device) for batch in batches), torch.zeros((), device=device))
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                total = self.accelerator.gather(total[None]).sum(0)
            self.ftprep_count = total if batches else None
            return batches, num_items_in_batch

        def accumulated_count(self, model) -> torch.Tensor | None:
            return self.ftprep_count if model.training else None

        def across_processes(self, loss: torch.Tensor, model) -> torch.Tensor:
            # The count is over every process and DDP averages the gradients: undo the average, as
            # transformers does for its own loss.
            if model.training and self.args.average_tokens_across_devices and self.args.world_size > 1:
                return loss * self.accelerator.num_processes
            return loss

    return ExactUnderAccumulation
