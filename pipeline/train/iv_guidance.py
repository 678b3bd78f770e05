"""IV-guided training (`ftprep iv`): the instruction vector added with a decaying weight, and a KL
term to the original model with the IV; `with_iv_guidance(Trainer)`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ftprep.stages.iv import add_instruction_vector
from ftprep.stages.supervision import IGNORE_INDEX
from ftprep.train.accumulation import exact_under_accumulation
from ftprep.train.token_weights import supervised_weight_sum, weighted_loss


@dataclass
class IVGuidance:
    """IV-guided training (Jiang et al., 2024, arXiv 2406.12227): keep the pathway the model already
    uses to follow the dataset's kind of instruction, the instruction vector (IV, `ftprep iv`).

    Two parts, as the paper names them:
    - Progressive IV intervention: the model in training runs with the IV added at the last prompt
      token (at each IV layer's o_proj output, where its heads write) with weight
      alpha_t = start_scale * (1 - t / T), from start_scale (1) at the first step down to 0 at the last
      of the T training steps: training starts on the original instruction pathway and hands it over
      to the weights gradually. (The paper describes the weight as decaying over training; the linear
      schedule is our choice.)
    - IV-based KL: the trained model (with alpha_t IV) is held to the frozen original model with the
      full IV: kl_weight_prompt_end * KL(p || p_ref) at the last prompt token (mean over rows) plus
      kl_weight_all * KL(p || p_ref) summed over a row's real tokens (mean over rows), both on
      distributions softened by `temperature`; a term counts only above `kl_floor`. At step 0 both runs
      are the same, so the KL starts at exactly 0.

    Defaults are the authors' settings in their released code for the method (GangweiJiang/FvForgetting,
    src/tuning/trainer/base.py and scripts/train/*_fvg.sh, Llama-2-7b-chat with LoRA, 10 heads):
    KL(new || reference) as `F.kl_div(log_softmax(ref / 2), softmax(new / 2))`, weights 20 (last
    prompt token) and 0.1 (all tokens), each counted only above 0.1. Not taken from it: its head-output
    MSE term (`--fv_pr`, weight 1.0) is not implemented, and the IV goes in per layer unless
    `edit_layer` asks for the reference's one-layer placement (README, "Differences from the
    reference code").

    `header_ids`: the chat template's generation header (`generation_header_ids(tokenizer)`); the last
    prompt token is the end of the last header before the first supervised label, so that it is found
    even when masking (STM) removed the first answer tokens from the labels. Without it, the token before
    the first supervised label is taken.
    """

    vectors: dict[int, torch.Tensor]
    header_ids: list[int] | None = None
    start_scale: float = 1.0
    kl_weight_prompt_end: float = 20.0
    kl_weight_all: float = 0.1
    temperature: float = 2.0
    kl_floor: float = 0.1
    # None: each layer's part of the IV at that layer's o_proj output, where its heads write. A layer
    # number: the whole IV (the sum of the parts) at that one layer's o_proj output, the reference
    # code's placement (its --edit_layer, 9 for Llama-2-7b).
    edit_layer: int | None = None

    def placed_vectors(self) -> dict[int, torch.Tensor]:
        """What is added where: {layer: vector} for add_instruction_vector."""
        if self.edit_layer is None or not self.vectors:
            return self.vectors
        return {self.edit_layer: torch.stack([vector.float() for vector in self.vectors.values()]).sum(0)}

    @classmethod
    def load(cls, path: str | Path, tokenizer=None, **settings) -> "IVGuidance":
        from ftprep.plans.iv import read_instruction_vector

        vectors, _ = read_instruction_vector(path)
        return cls(vectors, generation_header_ids(tokenizer) if tokenizer is not None else None, **settings)

    def scale_at(self, step: int, total_steps: int) -> float:
        return self.start_scale * max(0.0, 1.0 - step / max(total_steps, 1))


def generation_header_ids(tokenizer) -> list[int] | None:
    """The tokens the chat template puts between a prompt and its answer ('<|im_start|>assistant\\n')."""
    turn = [{"role": "user", "content": "x"}]
    with_header = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=False)
    if not with_header.startswith(without) or with_header == without:
        return None
    return tokenizer(with_header[len(without):], add_special_tokens=False)["input_ids"] or None


def prompt_end_positions(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                         header_ids: list[int] | None = None) -> torch.Tensor:
    """Per row, the index of the last prompt token: the end of the last generation header before the
    first supervised label, else the token before that label (a row with no label: its last token)."""
    supervised = labels != IGNORE_INDEX
    lengths = attention_mask.sum(1) if attention_mask is not None else torch.full_like(labels[:, 0], labels.shape[1])
    first_label = torch.where(supervised.any(1), supervised.int().argmax(1), lengths)
    fallback = (first_label - 1).clamp_min(0)
    if not header_ids or input_ids.shape[1] < len(header_ids):
        return fallback
    header = torch.as_tensor(header_ids, device=input_ids.device)
    starts = (input_ids.unfold(1, len(header_ids), 1) == header).all(-1)
    ends = torch.arange(starts.shape[1], device=input_ids.device) + len(header_ids) - 1
    last_end = torch.where(starts & (ends < first_label[:, None]), ends, -1).max(1).values
    return torch.where(last_end >= 0, last_end, fallback)


def iv_kl_terms(logits: torch.Tensor, reference_logits: torch.Tensor, positions: torch.Tensor,
                attention_mask: torch.Tensor | None = None, temperature: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p || p_ref) of the next-token distributions softened by temperature: at each row's last prompt
    token (mean over rows), and summed over a row's real tokens (mean over rows)."""
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    log_ref = torch.log_softmax(reference_logits.float() / temperature, dim=-1)
    token_kl = F.kl_div(log_ref, log_p, log_target=True, reduction="none").sum(-1)  # sum_v p (log p - log p_ref)
    rows = torch.arange(token_kl.shape[0], device=token_kl.device)
    real = attention_mask.to(token_kl.dtype) if attention_mask is not None else torch.ones_like(token_kl)
    return token_kl[rows, positions].mean(), (token_kl * real).sum() / token_kl.shape[0]


def iv_regularizer(guidance: IVGuidance, logits: torch.Tensor, reference_logits: torch.Tensor, positions: torch.Tensor,
                   attention_mask: torch.Tensor | None = None, rows: torch.Tensor | float | None = None) -> torch.Tensor:
    """The IV-based KL term added to the training loss (weights and floor from `guidance`).

    Both terms are means over rows: over this batch's rows, or over `rows`, the row count of the whole
    accumulated batch (this batch's share of it). The floor is tested on this batch's own means."""
    prompt_end, all_tokens = iv_kl_terms(logits, reference_logits, positions, attention_mask, guidance.temperature)
    share = 1.0 if rows is None else logits.shape[0] / torch.as_tensor(rows, dtype=torch.float32)
    # As in the authors' code: a term pulls only once the model has drifted past the floor.
    return share * sum(weight * term * (term > guidance.kl_floor)
                       for weight, term in ((guidance.kl_weight_prompt_end, prompt_end), (guidance.kl_weight_all, all_tokens)))


def _weight_sum_and_rows(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    weight_sum = supervised_weight_sum(batch)
    return torch.stack([weight_sum, torch.tensor(float(batch["input_ids"].shape[0]), device=weight_sum.device)])


def with_iv_guidance(trainer_class):
    """A subclass of `trainer_class` (Trainer, SFTTrainer...) that trains with IV guidance.

    Extra arguments: `iv_guidance` (an `IVGuidance`) and `reference_model`, the frozen original model
    (default: a copy of `model` as it is when the trainer is built; pass one to share memory, e.g. the
    base model under a PEFT adapter). Reads `loss_weights` too, as `with_token_weights` does.
    """

    class IVGuidedTrainer(exact_under_accumulation(trainer_class, _weight_sum_and_rows)):
        def __init__(self, *args, iv_guidance: IVGuidance, reference_model=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.iv_guidance = iv_guidance
            self.iv_reference = reference_model if reference_model is not None else copy.deepcopy(self.model)
            self.iv_reference.eval().requires_grad_(False)
            self.iv_last_step: dict[str, float] = {}

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            guidance = self.iv_guidance
            weights = inputs.pop("loss_weights", None)
            labels = inputs.pop("labels")
            positions = prompt_end_positions(inputs["input_ids"], labels, inputs.get("attention_mask"), guidance.header_ids)
            scale = guidance.scale_at(self.state.global_step, self.state.max_steps)
            with add_instruction_vector(model, guidance.placed_vectors(), scale, positions):
                outputs = model(**inputs)
            with torch.no_grad(), add_instruction_vector(self.iv_reference, guidance.placed_vectors(), 1.0, positions):
                reference_logits = self.iv_reference(**inputs).logits
            count = self.accumulated_count(model)
            weight_sum, rows = count if count is not None else (None, None)
            penalty = iv_regularizer(guidance, outputs.logits, reference_logits, positions, inputs.get("attention_mask"), rows)
            loss = self.across_processes(weighted_loss(outputs, labels, weight_sum, weights) + penalty, model)
            self.iv_last_step = {"iv_scale": scale, "iv_penalty": float(penalty.detach())}
            return (loss, outputs) if return_outputs else loss

    IVGuidedTrainer.__name__ = f"IVGuided{trainer_class.__name__}"
    return IVGuidedTrainer
