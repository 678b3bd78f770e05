"""The trainer module: weighted token cross-entropy that HF Trainer / TRL train with."""

import json
import math

import pytest
import torch
from conftest import run_cli

from ftprep.trainer import TokenWeightCollator, weighted_cross_entropy, with_token_weights

ROWS = [
    {"input_ids": [1, 520, 33, 91, 2], "labels": [-100, -100, 33, 91, 2], "loss_weights": [0.0, 0.0, 0.5, 0.0, 1.0]},
    {"input_ids": [1, 44, 2], "labels": [-100, 44, 2], "loss_weights": [0.0, 0.25, 1.0]},
]


@pytest.fixture(scope="module")
def model(plain_model):
    return plain_model


def test_collator_pads_with_no_loss():
    batch = TokenWeightCollator(pad_token_id=7)(ROWS)
    assert batch["input_ids"].tolist()[1] == [1, 44, 2, 7, 7]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0]
    assert batch["labels"].tolist()[1] == [-100, 44, 2, -100, -100]
    assert batch["loss_weights"].tolist()[1] == [0.0, 0.25, 1.0, 0.0, 0.0]
    plain = TokenWeightCollator(pad_token_id=7)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}])
    assert plain["loss_weights"].tolist() == [[0.0, 1.0, 1.0]]


def test_loss_equals_a_hand_computation(model):
    batch = TokenWeightCollator(pad_token_id=2)(ROWS)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    total = weight_sum = 0.0
    for b, row in enumerate(ROWS):
        for t in range(1, len(row["input_ids"])):
            if row["labels"][t] == -100:
                continue
            log_probs = torch.log_softmax(logits[b, t - 1], dim=-1)
            total += row["loss_weights"][t] * -log_probs[row["labels"][t]].item()
            weight_sum += row["loss_weights"][t]
    got = weighted_cross_entropy(logits.float(), batch["labels"], batch["loss_weights"]).item()
    assert got == pytest.approx(total / weight_sum, rel=1e-5)


def test_zero_weight_and_ignored_tokens_get_no_gradient(model):
    batch = TokenWeightCollator(pad_token_id=2)(ROWS)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits.clone().requires_grad_(True)
    weighted_cross_entropy(logits, batch["labels"], batch["loss_weights"]).backward()
    # Position t - 1 predicts token t: the gradient lands one position before each token.
    predicts = torch.zeros_like(batch["loss_weights"], dtype=torch.bool)
    predicts[:, :-1] = (batch["labels"][:, 1:] != -100) & (batch["loss_weights"][:, 1:] > 0)
    norms = logits.grad.norm(dim=-1)
    assert (norms[~predicts] == 0).all()
    assert (norms[predicts] > 0).all()


def test_unit_weights_equal_the_plain_loss(model):
    rows = [{**row, "loss_weights": None} for row in ROWS]
    batch = TokenWeightCollator(pad_token_id=2)(rows)
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    ours = weighted_cross_entropy(outputs.logits, batch["labels"], batch["loss_weights"])
    assert ours.item() == pytest.approx(outputs.loss.item(), rel=1e-5)


def test_trl_trains_one_step_on_soft_weights(scored_sample, tmp_path, model_dir):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    run_cli("mask", scored_sample, "-o", tmp_path / "soft", "--strategy", "soft")
    dataset = datasets.load_from_disk(str(tmp_path / "soft"))
    assert "loss_weights" in dataset.column_names
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = with_token_weights(SFTTrainer)(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                       use_cpu=True, save_strategy="no", remove_unused_columns=False, learning_rate=1e-4),
        train_dataset=dataset,
        data_collator=TokenWeightCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "loss_weights" in batch and batch["loss_weights"].dtype == torch.float32
    result = trainer.train()
    assert math.isfinite(result.training_loss) and result.training_loss > 0


@pytest.mark.parametrize("strategy", ["threshold", "soft"])
def test_exported_trl_snippet_trains_one_step(scored_sample, tmp_path, strategy):
    folder = tmp_path / strategy
    run_cli("mask", scored_sample, "-o", folder, "--strategy", strategy)
    snippet = run_cli("export-config", folder, "--target", "trl").stdout
    assert ("with_token_weights(SFTTrainer)" in snippet) == (strategy == "soft")
    # Only the run length changes for the test: one CPU step, no reports, nothing saved.
    quick = snippet.replace("num_train_epochs=1", "max_steps=1, use_cpu=True, report_to=[], save_strategy='no'")
    quick = quick.replace('output_dir="ftprep-sft"', f'output_dir="{tmp_path / "run"}"')
    assert quick != snippet
    namespace = {}
    exec(compile(quick, "snippet.py", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 1


def test_exported_yaml_names_the_folder(scored_sample, tmp_path):
    folder = tmp_path / "train"
    run_cli("mask", scored_sample, "-o", folder, "--target", "axolotl")
    axolotl = run_cli("export-config", folder, "--target", "axolotl").stdout
    # Paths are quoted: a folder named `run #2` must not become `run` in YAML.
    assert f"  - path: {json.dumps(str(folder.resolve()))}\n" in axolotl and "    type:\n" in axolotl
    factory = run_cli("export-config", folder, "--target", "llama-factory").stdout
    assert f"tokenized_path: {json.dumps(str(folder.resolve()))}\n" in factory
    run_cli("mask", scored_sample, "-o", tmp_path / "soft", "--strategy", "soft")
    refused = run_cli("export-config", tmp_path / "soft", "--target", "axolotl", check=False)
    assert refused.returncode == 1 and "cannot read" in refused.stderr
