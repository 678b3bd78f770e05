"""The training helpers are exact under gradient accumulation: batch 4 x accumulation 1 and batch 1 x
accumulation 4 over the same rows give the loss of a hand computation on the whole batch, and the
same update (issue 13: the per-micro-batch mean made them 4x too large at accumulation 4)."""

import math

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from ftprep.stages.iv import add_instruction_vector
from ftprep.trainer import (
    AnchorKLCollator,
    IVGuidance,
    TokenWeightCollator,
    anchor_kl_loss,
    iv_regularizer,
    prompt_end_positions,
    weighted_cross_entropy,
    with_anchor_kl,
    with_iv_guidance,
    with_token_weights,
)

pytestmark = pytest.mark.slow  # every test here runs the model

PROMPT = 3  # prompt tokens per row
LENGTHS = (9, 14, 6, 11)  # unequal, so that a per-row or per-micro-batch mean would not hide


def soft_rows():
    generator = torch.Generator().manual_seed(5)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(10, 4000, (length,), generator=generator).tolist()
        weights = [0.0] * PROMPT + torch.rand(length - PROMPT, generator=generator).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": [-100] * PROMPT + ids[PROMPT:],
                     "loss_weights": weights})
    return rows


def anchor_rows():
    """Anchors at every third answer token (one with c = 1), the rest of the answer under KL to a top-3."""
    generator = torch.Generator().manual_seed(6)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(10, 4000, (length,), generator=generator).tolist()
        answer = range(PROMPT, length)
        anchors = {t for t in answer if (t - PROMPT) % 3 == 0}
        topk = [[] if t < PROMPT else torch.randint(10, 4000, (3,), generator=generator).tolist() for t in range(length)]
        logprobs = [[] if t < PROMPT else sorted(torch.randn(3, generator=generator).mul(2).sub(1).tolist(), reverse=True)
                    for t in range(length)]
        rows.append({
            "input_ids": ids, "attention_mask": [1] * length,
            "labels": [ids[t] if t in anchors else -100 for t in range(length)],
            "ref_topk_ids": topk, "ref_topk_logprobs": logprobs,
            "kl_mask": [int(t >= PROMPT and t not in anchors) for t in range(length)],
            "anchor_confidence": [(1.0 if t == PROMPT else 0.7) if t in anchors else 0.0 for t in range(length)],
        })
    return rows


class KeepGradients(TrainerCallback):
    """The accumulated gradients, as the optimizer is about to use them."""

    def __init__(self):
        self.gradients = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: param.grad.detach().clone() for name, param in model.named_parameters()
                          if param.grad is not None}


def train_one_step(wrapper, model_dir, rows, collator, batch_size, accumulation, tmp_path, **extra):
    """One optimizer step; returns the training loss and the gradient it stepped with."""
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    gradients = KeepGradients()
    trainer = wrapper(SFTTrainer)(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path / f"b{batch_size}ga{accumulation}"), max_steps=1, report_to=[],
                       per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                       use_cpu=True, save_strategy="no", remove_unused_columns=False, max_length=None),
        train_dataset=datasets.Dataset.from_list(rows),
        data_collator=collator,
        callbacks=[gradients],
        **extra,
    )
    loss = trainer.train().training_loss
    return loss, gradients.gradients


def assert_exact_under_accumulation(wrapper, model_dir, rows, collator, expected, tmp_path, **extra):
    whole, whole_gradient = train_one_step(wrapper, model_dir, rows, collator, 4, 1, tmp_path, **extra)
    accumulated, accumulated_gradient = train_one_step(wrapper, model_dir, rows, collator, 1, 4, tmp_path, **extra)
    print(f"{wrapper.__name__}: hand {expected:.6f}, batch 4 x GA 1 {whole:.6f}, batch 1 x GA 4 {accumulated:.6f}")
    assert math.isfinite(expected) and expected > 0
    assert whole == pytest.approx(expected, rel=1e-4)
    assert accumulated == pytest.approx(expected, rel=1e-4)  # the issue asks for 2 %; it is exact
    assert whole_gradient.keys() == accumulated_gradient.keys() and len(whole_gradient) > 10
    # The same gradient (4x apart before the fix). Measured: within 0.6 % on the first layer's weights,
    # whose gradients are the smallest, and 1e-7 between two batch-4 runs; the issue asks for 2 %.
    worst = max(((accumulated_gradient[name] - gradient).norm() / gradient.norm()).item()
                for name, gradient in whole_gradient.items())
    print(f"  largest relative difference of a parameter's gradient: {worst:.1e}")
    assert worst < 0.02


def whole_batch_logits(model_dir, batch, vectors=None, scale=1.0, positions=None):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad(), add_instruction_vector(model, vectors or {}, scale, positions):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_token_weights_are_exact_under_accumulation(tiny_model_dir, tmp_path):
    rows = soft_rows()
    collator = TokenWeightCollator(pad_token_id=2)
    batch = collator(rows)
    logits = whole_batch_logits(tiny_model_dir, batch).double()
    # By hand: sum over the 4 rows of w_t * CE_t, over the sum of their weights.
    total = weight_sum = 0.0
    for b, row in enumerate(rows):
        for t in range(PROMPT, len(row["input_ids"])):
            total += row["loss_weights"][t] * -torch.log_softmax(logits[b, t - 1], -1)[row["labels"][t]].item()
            weight_sum += row["loss_weights"][t]
    expected = total / weight_sum
    assert weighted_cross_entropy(logits.float(), batch["labels"], batch["loss_weights"]).item() == pytest.approx(expected, rel=1e-5)
    assert_exact_under_accumulation(with_token_weights, tiny_model_dir, rows, collator, expected, tmp_path)


def test_anchor_kl_is_exact_under_accumulation(tiny_model_dir, tmp_path):
    rows = anchor_rows()
    collator = AnchorKLCollator(pad_token_id=2)
    batch = collator(rows)
    logits = whole_batch_logits(tiny_model_dir, batch)
    # The whole batch's loss (anchor_kl_loss itself is checked by hand in test_anchors.py), and the
    # mean of per-row losses, which differs: rows carry different numbers of positions.
    expected = anchor_kl_loss(logits, **{k: batch[k] for k in ("labels", "ref_topk_ids", "ref_topk_logprobs", "kl_mask",
                                                               "anchor_confidence")}).item()
    per_row = [anchor_kl_loss(logits[b:b + 1, :n], *(batch[k][b:b + 1, :n] for k in ("labels", "ref_topk_ids",
                              "ref_topk_logprobs", "kl_mask", "anchor_confidence"))).item() for b, n in enumerate(LENGTHS)]
    assert abs(sum(per_row) / 4 - expected) > 1e-3 * expected
    assert_exact_under_accumulation(with_anchor_kl, tiny_model_dir, rows, collator, expected, tmp_path)


def test_iv_guidance_is_exact_under_accumulation(tiny_model_dir, tmp_path):
    rows = soft_rows()
    collator = TokenWeightCollator(pad_token_id=2)
    batch = collator(rows)
    vectors = {1: torch.randn(64, generator=torch.Generator().manual_seed(7))}
    # A reference that is not the model (another random init), so that the KL terms count from step 0.
    torch.manual_seed(11)
    reference = AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(tiny_model_dir).config).eval()
    guidance = IVGuidance(vectors, kl_floor=0.0)
    positions = prompt_end_positions(batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert positions.tolist() == [PROMPT - 1] * 4
    logits = whole_batch_logits(tiny_model_dir, batch, vectors, 1.0, positions)  # step 0 of 1: alpha = 1
    with torch.no_grad(), add_instruction_vector(reference, vectors, 1.0, positions):
        reference_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    penalty = iv_regularizer(guidance, logits, reference_logits, positions, batch["attention_mask"]).item()
    expected = weighted_cross_entropy(logits, batch["labels"], batch["loss_weights"]).item() + penalty
    assert penalty > 0.1
    assert_exact_under_accumulation(with_iv_guidance, tiny_model_dir, rows, collator, expected, tmp_path,
                                    iv_guidance=guidance, reference_model=reference)
