"""The trainer module: weighted token cross-entropy that HF Trainer / TRL train with."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import DATA, run_cli, score_folder

from ftprep.manifest import ModelInfo
from ftprep.publish.export_config import base_model_note, default_base_model
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_unit_weights_equal_the_plain_loss(model):
    rows = [{**row, "loss_weights": None} for row in ROWS]
    batch = TokenWeightCollator(pad_token_id=2)(rows)
    with torch.no_grad():
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    ours = weighted_cross_entropy(outputs.logits, batch["labels"], batch["loss_weights"])
    assert ours.item() == pytest.approx(outputs.loss.item(), rel=1e-5)


@pytest.mark.slow
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


@pytest.fixture(scope="module")
def small_scored(tmp_path_factory, tiny_model_dir):
    """8 rows of data/sample.jsonl scored by the tiny model: one epoch is two steps at the snippets' batch size 4."""
    return score_folder(DATA / "sample.jsonl", tmp_path_factory.mktemp("small") / "scored", model=tiny_model_dir, limit=8)


@pytest.mark.parametrize("strategy", ["threshold", "soft"])
@pytest.mark.slow
def test_exported_trl_script_runs_as_printed(small_scored, tiny_model_dir, tmp_path, monkeypatch, strategy):
    folder = tmp_path / strategy
    run_cli("mask", small_scored, "-o", folder, "--strategy", strategy)
    script = run_cli("export-config", folder, "--target", "trl").stdout
    # Scored with a local folder: that folder is the model the script trains.
    assert f"model_path = {tiny_model_dir!r}\n" in script
    assert ("with_token_weights(SFTTrainer)" in script) == (strategy == "soft")
    monkeypatch.chdir(tmp_path)  # the script's output_dir is relative
    namespace = {"__name__": "__main__"}
    exec(compile(script, "train.py", "exec"), namespace)  # the printed text, unchanged
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2  # one epoch of 8 rows at batch size 4
    assert trainer.args.use_cpu == (not torch.cuda.is_available())
    assert not trainer.args.fp16 and trainer.args.bf16 == (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert (tmp_path / "ftprep-sft").is_dir()
    # The batches TRL builds carry ftprep's labels unchanged: every -100 survives (padding aside).
    dataset = namespace["dataset"]
    labels_of = {tuple(ids): labels for ids, labels in zip(dataset["input_ids"], dataset["labels"])}
    seen = 0
    for batch in trainer.get_train_dataloader():
        for ids, mask, labels in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), batch["labels"].tolist()):
            length = sum(mask)
            assert labels[:length] == labels_of[tuple(ids[:length])] and set(labels[length:]) <= {-100}
            seen += 1
    assert seen == len(dataset) == 8


@pytest.mark.slow
def test_the_trl_script_for_the_embedded_model_trains_offline_as_printed(model_dir, tmp_path):
    """Scored with the embedded model, the printed script trains the dense copy that scored, from
    its folder: run unchanged as `python train.py` with the Hub out of reach and an empty HF cache."""
    # 4 rows of at most 64 tokens: one training step of the 135M model.
    scored = score_folder(DATA / "sample.jsonl", tmp_path / "scored", limit=4, max_length=64, overlong="truncate")
    run_cli("mask", scored, "-o", tmp_path / "train")
    script = run_cli("export-config", tmp_path / "train", "--target", "trl").stdout
    assert f"model_path = {model_dir!r}\n" in script
    assert "--base-model HuggingFaceTB/SmolLM2-135M-Instruct" in script  # the hub original, in a comment
    (tmp_path / "train.py").write_text(script)
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "empty-hf-home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
            "OMP_NUM_THREADS": "1"}  # on shared cores waiting torch threads spin: 6 s of training instead of 30
    result = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'train_loss'" in result.stdout + result.stderr  # it trained to the end
    assert (tmp_path / "ftprep-sft").is_dir() and not (tmp_path / "empty-hf-home" / "hub").exists()


@pytest.mark.slow
def test_trl_sft_trains_on_the_local_parquet_export(small_scored, tiny_model_dir, tmp_path):
    folder, parquet = tmp_path / "train", tmp_path / "parquet"
    run_cli("mask", small_scored, "-o", folder)
    run_cli("export", folder, "--parquet", parquet)
    # `trl sft`, TRL's own command line, from this environment; offline, with its caches in tmp_path.
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "trl.cli.main", "sft", "--model_name_or_path", tiny_model_dir, "--dataset_name", str(parquet),
         "--max_steps", "2", "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "sft"), "--use_cpu",
         "--report_to", "none", "--save_strategy", "no", "--logging_steps", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'epoch'" in result.stdout + result.stderr  # it logged training steps
    assert (tmp_path / "sft" / "config.json").is_file()  # and saved the model it trained


@pytest.mark.slow
def test_base_model_defaults_to_the_model_that_scored_and_can_be_overridden(scored_sample, model_dir, tmp_path):
    folder = tmp_path / "train"
    run_cli("mask", scored_sample, "-o", folder)
    keys = {"axolotl": "base_model", "llama-factory": "model_name_or_path"}
    for target in ("trl", "axolotl", "llama-factory"):
        printed = run_cli("export-config", folder, "--target", target).stdout
        # The embedded alias: the dense copy that scored, and the hub original it came from in a comment.
        assert f"# {model_dir}: ftprep's dense copy of smollm2-135m, the model that scored.\n" in printed
        assert "--base-model HuggingFaceTB/SmolLM2-135M-Instruct\n" in printed
        chosen = run_cli("export-config", folder, "--target", target, "--base-model", "me/my-model").stdout
        assert "SmolLM2" not in chosen and "dense copy" not in chosen
        if target == "trl":
            assert f"model_path = {model_dir!r}\n" in printed
            assert "model_path = 'me/my-model'\n" in chosen
        else:
            assert yaml.safe_load(printed)[keys[target]] == model_dir
            assert yaml.safe_load(chosen)[keys[target]] == "me/my-model"
    # A hub id stays a hub id, with no note; a GGUF file is the folder that scored, with one.
    assert default_base_model(ModelInfo(spec="org/model", path="org/model")) == "org/model"
    assert base_model_note(ModelInfo(spec="org/model", path="org/model"), None) == ""
    assert default_base_model(ModelInfo(spec="m.gguf", path="/cache/models/m-1234")) == "/cache/models/m-1234"
    assert base_model_note(ModelInfo(spec="m.gguf", path="/cache/models/m-1234"), None).startswith("# /cache/models/m-1234: ")


@pytest.mark.slow
def test_exported_yaml_names_the_folder(scored_sample, tmp_path):
    folder = tmp_path / "train"
    run_cli("mask", scored_sample, "-o", folder, "--target", "axolotl")
    axolotl = run_cli("export-config", folder, "--target", "axolotl").stdout
    # Paths are quoted: a folder named `run #2` must not become `run` in YAML.
    assert f"  - path: {json.dumps(str(folder.resolve()))}\n" in axolotl and "    type:\n" in axolotl
    # Precision that works on the CPU and on a GPU: bf16 where the GPU has it, never Axolotl's fp16 default.
    assert {key: yaml.safe_load(axolotl)[key] for key in ("bf16", "fp16")} == {"bf16": "auto", "fp16": False}
    factory = run_cli("export-config", folder, "--target", "llama-factory").stdout
    assert f"tokenized_path: {json.dumps(str(folder.resolve()))}\n" in factory
    config = yaml.safe_load(factory)
    assert config["tokenized_path"] == str(folder.resolve()) and config["dataset"]  # LLaMA-Factory asks for both
    run_cli("mask", scored_sample, "-o", tmp_path / "soft", "--strategy", "soft")
    refused = run_cli("export-config", tmp_path / "soft", "--target", "axolotl", check=False)
    assert refused.returncode == 1 and "cannot read" in refused.stderr
