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

The helpers live in ftprep.train, one module per way of training; this module is their public import.
"""

from ftprep.stages.supervision import IGNORE_INDEX
from ftprep.train.anchor_kl import (
    ANCHOR_KL_COLUMNS,
    KL_DIRECTIONS,
    AnchorKLCollator,
    anchor_kl_loss,
    anchor_kl_positions,
    with_anchor_kl,
)
from ftprep.train.hft import apply_hft_plan
from ftprep.train.iv_guidance import (
    IVGuidance,
    generation_header_ids,
    iv_kl_terms,
    iv_regularizer,
    prompt_end_positions,
    with_iv_guidance,
)
from ftprep.train.token_weights import (
    TokenWeightCollator,
    supervised_weight_sum,
    weighted_cross_entropy,
    weighted_loss,
    with_token_weights,
)

__all__ = ["ANCHOR_KL_COLUMNS", "IGNORE_INDEX", "KL_DIRECTIONS", "AnchorKLCollator", "IVGuidance", "TokenWeightCollator",
           "anchor_kl_loss", "anchor_kl_positions", "apply_hft_plan", "generation_header_ids", "iv_kl_terms", "iv_regularizer",
           "prompt_end_positions", "supervised_weight_sum", "weighted_cross_entropy", "weighted_loss", "with_anchor_kl",
           "with_iv_guidance", "with_token_weights"]
