"""Train on ftprep's per-token weights with HF `Trainer` or TRL's `SFTTrainer`.

No mainstream trainer reads a weight column, so this module is what a user adds:

    from ftprep.trainer import TokenWeightCollator, with_token_weights
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

Gradient accumulation: the three trainers below normalize over the whole accumulated batch (all
micro-batches of one optimizer step, and all processes when `average_tokens_across_devices`), as
transformers does for its own loss with `num_items_in_batch`; so batch 4 x accumulation 1 and batch
1 x accumulation 4 give the same loss and the same gradients.

Half fine-tuning (`ftprep hft-plan`): `apply_hft_plan(model, "plan.json")` before building the
trainer freezes what the plan freezes; HF Trainer and TRL then optimize only the rest.

Anchors (`ftprep mask --strategy anchor`, AnchorLwF): `with_anchor_kl(SFTTrainer)` with
`AnchorKLCollator` trains with `anchor_kl_loss`: at anchors KL(p_theta || c_t onehot + (1 - c_t)
p_ref), elsewhere KL(p_theta || p_ref), over the stored reference top-k.

IV-guided training (`ftprep iv`): `with_iv_guidance(SFTTrainer)(..., iv_guidance=IVGuidance.load("iv.safetensors",
tokenizer))` adds the instruction vector during training with a decaying weight and a KL term to the
original model with the IV; see `IVGuidance`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftprep.stages.errors import FtprepError
from ftprep.stages.iv import add_instruction_vector

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


def _exact_under_accumulation(trainer_class, count):
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


def with_token_weights(trainer_class):
    """A subclass of `trainer_class` (Trainer, SFTTrainer...) whose loss reads `loss_weights`,
    normalized by the weight sum of the whole accumulated batch."""

    class TokenWeightedTrainer(_exact_under_accumulation(trainer_class, supervised_weight_sum)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("loss_weights", None)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = weighted_loss(outputs, labels, self.accumulated_count(model), weights)
            loss = self.across_processes(loss, model)
            return (loss, outputs) if return_outputs else loss

    TokenWeightedTrainer.__name__ = f"TokenWeighted{trainer_class.__name__}"
    return TokenWeightedTrainer


ANCHOR_KL_COLUMNS = ("ref_topk_ids", "ref_topk_logprobs", "kl_mask", "anchor_confidence")
KL_DIRECTIONS = ("reverse", "forward")


@dataclass
class AnchorKLCollator:
    """Right-pads the columns of `ftprep mask --strategy anchor` into tensors: input_ids,
    attention_mask, labels, kl_mask (bool), anchor_confidence [B, T] and ref_topk_ids,
    ref_topk_logprobs [B, T, K]. Positions without a reference top-k (prompt, padding) get
    logprobs -inf, which the loss reads as "no reference here"."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        batch = TokenWeightCollator(self.pad_token_id, self.pad_to_multiple_of)(rows)
        del batch["loss_weights"]
        size, longest = batch["input_ids"].shape
        widths = [np.fromiter(map(len, row["ref_topk_ids"]), np.int64, len(row["ref_topk_ids"])) for row in rows]
        k = max((int(w.max()) for w in widths if len(w)), default=0)
        ids = torch.zeros((size, longest, k), dtype=torch.long)
        logprobs = torch.full((size, longest, k), float("-inf"), dtype=torch.float32)
        kl_mask = torch.zeros((size, longest), dtype=torch.bool)
        confidence = torch.zeros((size, longest), dtype=torch.float32)
        for index, (row, width) in enumerate(zip(rows, widths)):
            if not len(row["input_ids"]) == len(width) == len(row["kl_mask"]):
                raise ValueError(f"a row has {len(row['input_ids'])} input_ids but {len(width)} KL targets: something cut one "
                                 "and not the other (TRL's SFTConfig: set max_length=None; ftprep score --max-length bounds rows)")
            held = torch.from_numpy(np.flatnonzero(width))
            if len(held):
                ids[index, held] = torch.from_numpy(np.fromiter(chain.from_iterable(row["ref_topk_ids"]), np.int64).reshape(-1, k))
                logprobs[index, held] = torch.from_numpy(
                    np.fromiter(chain.from_iterable(row["ref_topk_logprobs"]), np.float32).reshape(-1, k))
            length = len(row["kl_mask"])
            kl_mask[index, :length] = torch.as_tensor(row["kl_mask"]).bool()
            confidence[index, :length] = torch.as_tensor(row["anchor_confidence"], dtype=torch.float32)
        return {**batch, "ref_topk_ids": ids, "ref_topk_logprobs": logprobs, "kl_mask": kl_mask, "anchor_confidence": confidence}


def anchor_kl_loss(logits: torch.Tensor, labels: torch.Tensor, ref_topk_ids: torch.Tensor, ref_topk_logprobs: torch.Tensor,
                   kl_mask: torch.Tensor, anchor_confidence: torch.Tensor, direction: str = "reverse",
                   total: torch.Tensor | float | None = None) -> torch.Tensor:
    """AnchorLwF's hybrid loss, averaged over the positions that carry one (anchors and kl_mask):
    summed, then divided by `total`, by default this batch's count of such positions (under gradient
    accumulation, the accumulated batch's `anchor_kl_positions` count).

    At each such position t the target is q_t = c_t onehot(label_t) + (1 - c_t) p_ref, c_t = 0 off
    anchors, over the support S_t = the stored top-k ids, plus the label at an anchor whose label is
    not among them; p_ref and p_theta are both renormalized over S_t. The loss is KL(p_theta || q_t)
    (direction "reverse", as the issue and the paper's formula write it) or KL(q_t || p_theta)
    ("forward", what the LAwF reference code computes). An anchor with c_t = 1 (or without a
    reference top-k) takes plain cross-entropy over the full vocabulary: its target is a point mass,
    to which the reverse KL is infinite and the forward KL is the cross-entropy.
    Inputs are not shifted (HF convention): logits at position i - 1 predict token i.
    """
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"direction must be one of {KL_DIRECTIONS}, not {direction!r}")
    logits = logits[:, :-1]
    hard, soft = _anchor_kl_groups(labels, ref_topk_logprobs, kl_mask, anchor_confidence)
    labels, ids, ref, confidence = (x[:, 1:] for x in (labels, ref_topk_ids, ref_topk_logprobs, anchor_confidence))
    anchor = labels != IGNORE_INDEX
    count = (hard | soft).sum() if total is None else torch.as_tensor(total, dtype=torch.float32)

    summed = F.cross_entropy(logits[hard].float(), labels[hard], reduction="sum") if hard.any() else logits.new_zeros((), dtype=torch.float32)
    if soft.any():
        summed = summed + _soft_target_kl(logits[soft].float(), labels[soft], anchor[soft],
                                          confidence[soft].float(), ids[soft], ref[soft].float(), direction).sum()
    # A batch with no such position contributes a zero loss, not a NaN.
    return summed / count.clamp_min(1)


def _anchor_kl_groups(labels, ref_topk_logprobs, kl_mask, anchor_confidence) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions (shifted: index t - 1 predicts token t) that take cross-entropy (`hard`: anchors
    with c_t = 1 or no reference) and those that take the soft-target KL (`soft`)."""
    labels, ref, kl_mask, confidence = (x[:, 1:] for x in (labels, ref_topk_logprobs, kl_mask, anchor_confidence))
    has_ref = torch.isfinite(ref).any(dim=-1)
    anchor = labels != IGNORE_INDEX
    hard = anchor & ((confidence >= 1) | ~has_ref)
    soft = (anchor & ~hard) | (kl_mask.bool() & has_ref & ~anchor)
    return hard, soft


def anchor_kl_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many positions of a collated batch carry an anchor-KL term (what anchor_kl_loss divides by)."""
    hard, soft = _anchor_kl_groups(batch["labels"], batch["ref_topk_logprobs"], batch["kl_mask"], batch["anchor_confidence"])
    return (hard | soft).sum().to(torch.float32)


def _soft_target_kl(logits, labels, is_anchor, confidence, ids, ref_logprobs, direction) -> torch.Tensor:
    """Per position [N], the KL between p_theta and c onehot + (1 - c) p_ref on the support (see anchor_kl_loss)."""
    minus_inf = float("-inf")
    label = labels.clamp_min(0)[:, None]
    c = torch.where(is_anchor, confidence, torch.zeros_like(confidence))[:, None]
    # The label joins the support as an extra column when the top-k misses it; p_ref gives it no mass.
    support = torch.cat([ids, label], dim=-1)
    valid = torch.cat([torch.isfinite(ref_logprobs), (is_anchor & ~(ids == label).any(dim=-1))[:, None]], dim=-1)
    ref = torch.cat([ref_logprobs, torch.full_like(label, minus_inf, dtype=ref_logprobs.dtype)], dim=-1)
    log_ref = ref - torch.logsumexp(ref, dim=-1, keepdim=True)
    onehot = (support == label) & valid & is_anchor[:, None]
    with torch.no_grad():  # log of the mixture, in log space: (1 - c) p_ref + c onehot
        log_target = torch.logaddexp(torch.log1p(-c) + log_ref, torch.where(onehot, torch.log(c), minus_inf))
    student = torch.log_softmax(logits, dim=-1).gather(1, support)
    log_student = student - torch.logsumexp(student.masked_fill(~valid, minus_inf), dim=-1, keepdim=True)
    # Off the support nothing counts; finite fillers keep inf * 0 out of the gradient.
    log_student = log_student.masked_fill(~valid, 0.0)
    log_target = log_target.masked_fill(~valid, 0.0)
    if direction == "reverse":
        terms = log_student.exp() * (log_student - log_target)
    else:
        terms = log_target.exp() * (log_target - log_student)
    return terms.masked_fill(~valid, 0.0).sum(dim=-1)


def with_anchor_kl(trainer_class, direction: str = "reverse"):
    """A subclass of `trainer_class` (Trainer, SFTTrainer...) whose loss is `anchor_kl_loss` on the
    columns of `ftprep mask --strategy anchor` (collated by AnchorKLCollator)."""
    if direction not in KL_DIRECTIONS:
        raise ValueError(f"direction must be one of {KL_DIRECTIONS}, not {direction!r}")

    class AnchorKLTrainer(_exact_under_accumulation(trainer_class, anchor_kl_positions)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = {name: inputs.pop(name) for name in ANCHOR_KL_COLUMNS}
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = anchor_kl_loss(outputs.logits, labels, **targets, direction=direction, total=self.accumulated_count(model))
            loss = self.across_processes(loss, model)
            return (loss, outputs) if return_outputs else loss

    AnchorKLTrainer.__name__ = f"AnchorKL{trainer_class.__name__}"
    return AnchorKLTrainer


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


# -- IV-guided training -------------------------------------------------------------------


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

    class IVGuidedTrainer(_exact_under_accumulation(trainer_class, _weight_sum_and_rows)):
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
