"""AnchorLwF training (`ftprep mask --strategy anchor`): the collator of the KL-target columns, the
hybrid loss (cross-entropy towards c_t onehot + (1 - c_t) p_ref at anchors, KL to p_ref elsewhere)
and `with_anchor_kl(Trainer)`."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch
import torch.nn.functional as F

from ftprep.stages.supervision import IGNORE_INDEX
from ftprep.train.accumulation import exact_under_accumulation
from ftprep.train.token_weights import TokenWeightCollator

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

    class AnchorKLTrainer(exact_under_accumulation(trainer_class, anchor_kl_positions)):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = {name: inputs.pop(name) for name in ANCHOR_KL_COLUMNS}
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = anchor_kl_loss(outputs.logits, labels, **targets, direction=direction, total=self.accumulated_count(model))
            loss = self.across_processes(loss, model)
            return (loss, outputs) if return_outputs else loss

    AnchorKLTrainer.__name__ = f"AnchorKL{trainer_class.__name__}"
    return AnchorKLTrainer
