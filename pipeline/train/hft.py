"""Half fine-tuning (`ftprep hft-plan`): freeze what a plan freezes, before the trainer is built."""

from __future__ import annotations

from pathlib import Path

import torch

from ftprep.stages.errors import FtprepError


def apply_hft_plan(model: torch.nn.Module, plan: dict | str | Path) -> int:
    """Set requires_grad as an HFT plan (or its JSON file) says; return the trainable parameter count.

    Call it before building the trainer: HF Trainer and TRL put only parameters that require a
    gradient into the optimizer, and a frozen parameter gets no gradient, so even an optimizer
    over all parameters (weight decay included) leaves it as it is.
    """
    if not isinstance(plan, dict):
        from ftprep.plans.hft_plan import read_hft_plan

        plan = read_hft_plan(Path(plan))
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
