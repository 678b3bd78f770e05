"""Half fine-tuning plans: the choice is reproducible, trains the ratio, and a step moves only it."""

import json
import math
import re

import pytest
import torch
import yaml
from conftest import run_cli

from ftprep.models import parameter_shapes
from ftprep.stages.errors import FtprepError
from ftprep.stages.hft import ATTENTION, FFN, classify, hft_plan
from ftprep.trainer import apply_hft_plan

# Configs alone: the plan reads no weights, so an 8B model costs nothing here.
LLAMA_8B = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "tie_word_embeddings": False}
# Qwen2 has biases on q/k/v but not on o; 23 layers makes 1.5 feed-forward projections per layer round.
QWEN2_SMALL = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 128, "intermediate_size": 320,
               "num_hidden_layers": 23, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
               "tie_word_embeddings": True}
GPT2_SMALL = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 64, "n_head": 2,
              "vocab_size": 50257}


def config_folder(tmp_path, name, config):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def shapes(model_dir):
    return parameter_shapes(model_dir)[0]


def numel(shapes, names):
    return sum(math.prod(shapes[name]) for name in names)


def selected_share(shapes, trainable):
    """Share of attention + feed-forward parameters that train, counted from the names alone."""
    selected = [name for name in shapes if classify(name)[0] in ("attention", "ffn")]
    return numel(shapes, [name for name in selected if name in trainable]) / numel(shapes, selected)


def test_same_seed_same_plan_other_seed_other_plan(shapes):
    first, again, other = hft_plan(shapes, seed=1), hft_plan(shapes, seed=1), hft_plan(shapes, seed=2)
    assert first == again
    assert first["trainable"] != other["trainable"]
    assert first["parameters"]["attention_and_ffn"] == other["parameters"]["attention_and_ffn"]


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.25])
def test_share_of_attention_and_ffn_parameters_is_the_ratio(shapes, ratio):
    plan = hft_plan(shapes, ratio=ratio, seed=7)
    trainable = set(plan["trainable"])
    assert set(plan["trainable"]) | set(plan["frozen"]) == set(shapes) and not trainable & set(plan["frozen"])
    layers = plan["layers"]
    # SmolLM2: 30 layers, q/o and k/v two size classes of 2, gate/up/down one class of 3.
    # Each class trains round(ratio * m * 30) of its m * 30 projections: within 1 / (2 m 30) of the ratio.
    bound = 1 / (2 * 2 * layers)
    assert selected_share(shapes, trainable) == pytest.approx(ratio, abs=bound)
    for category, members in (("attention", ATTENTION), ("ffn", FFN)):
        names = [name for name in shapes if classify(name)[0] == category]
        share = numel(shapes, trainable & set(names)) / numel(shapes, names)
        assert share == pytest.approx(ratio, abs=1 / (2 * 2 * layers))
        assert plan["parameters"]["by_category"][category]["share"] == pytest.approx(share)
        per_layer = [len(layer[category]) for layer in plan["per_layer"]]
        assert max(per_layer) - min(per_layer) <= 2  # one extra per size class at most
    if ratio == 0.5:
        assert selected_share(shapes, trainable) == 0.5  # every class divides evenly here
        for layer in plan["per_layer"]:
            assert len(layer["attention"]) == 2 and len(layer["ffn"]) in (1, 2)
            assert len({"q_proj", "o_proj"} & set(layer["attention"])) == 1  # one of each size
    assert not any(classify(name)[0] in ("embeddings", "norms") for name in trainable)


def test_embeddings_and_norms_train_only_when_asked(shapes):
    plan = hft_plan(shapes, train_embeddings=True, train_norms=True)
    by_category = plan["parameters"]["by_category"]
    assert by_category["embeddings"]["share"] == 1.0 and by_category["norms"]["share"] == 1.0
    assert "model.embed_tokens.weight" in plan["trainable"] and "model.norm.weight" in plan["trainable"]
    assert plan["parameters"]["attention_and_ffn"]["share"] == 0.5


def test_biases_follow_their_projection_and_the_share_holds(tmp_path):
    shapes, model_type = parameter_shapes(str(config_folder(tmp_path, "qwen2", QWEN2_SMALL)))
    assert model_type == "qwen2" and "model.layers.0.self_attn.q_proj.bias" in shapes
    plan = hft_plan(shapes, ratio=0.5, seed=3)
    trainable = set(plan["trainable"])
    for name in shapes:
        if name.endswith(".bias") and classify(name)[0] == "attention":
            assert (name in trainable) == (name.replace(".bias", ".weight") in trainable)
    # 23 layers: 34.5 feed-forward projections round to 35; q and o differ by o's missing bias.
    hidden, layers = 128, 23
    ffn_bound = 0.5 / (3 * layers)
    bias_bound = hidden / numel(shapes, [name for name in shapes if classify(name)[0] == "attention"])
    assert selected_share(shapes, trainable) == pytest.approx(0.5, abs=ffn_bound + bias_bound)
    assert sum(len(layer["ffn"]) for layer in plan["per_layer"]) == 35


@pytest.mark.parametrize("model_type", ["mistral", "qwen3"])
def test_other_llama_style_architectures_get_plans(tmp_path, model_type):
    # Qwen3 adds q_norm/k_norm inside attention: norms, frozen like the others.
    config = {**QWEN2_SMALL, "model_type": model_type, "num_hidden_layers": 4, "head_dim": 32}
    shapes, _ = parameter_shapes(str(config_folder(tmp_path, model_type, config)))
    plan = hft_plan(shapes)
    assert plan["parameters"]["attention_and_ffn"]["share"] == 0.5
    assert plan["parameters"]["by_category"]["norms"]["trainable"] == 0


def test_cli_writes_plan_and_axolotl_config_for_an_8b_model_without_weights(tmp_path):
    folder = config_folder(tmp_path, "llama-8b", LLAMA_8B)
    result = run_cli("hft-plan", "--model", folder, "-o", tmp_path / "plan.json", "--axolotl-yaml", tmp_path / "axolotl.yml")
    assert "attention + feed-forward: 50.0%" in result.stdout
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["model"]["model_type"] == "llama" and plan["layers"] == 32
    assert plan["parameters"]["total"] == 8_030_261_248  # Llama-3-8B
    assert plan["parameters"]["attention_and_ffn"]["share"] == 0.5
    assert "lm_head.weight" in plan["frozen"] and "model.embed_tokens.weight" in plan["frozen"]
    patterns = yaml.safe_load((tmp_path / "axolotl.yml").read_text())["unfrozen_parameters"]
    assert patterns == plan["axolotl"]["unfrozen_parameters"]
    # Axolotl's own reading of a pattern: every "." not before "+" is a literal dot, matched from the start.
    compiled = [re.compile(re.sub(r"\.(?!\+)", r"\\.", pattern)) for pattern in patterns]
    names = plan["trainable"] + plan["frozen"]
    unfrozen = {name for name in names if any(pattern.match(name) for pattern in compiled)}
    assert unfrozen == set(plan["trainable"])


def test_unsupported_architecture_and_missing_model_are_one_line_errors(tmp_path):
    folder = config_folder(tmp_path, "gpt2", GPT2_SMALL)
    for model, message in ((folder, "error: cannot make an HFT plan for this model: transformer.wte.weight is none"),
                           (tmp_path / "nothing", "error: model not found")):
        result = run_cli("hft-plan", "--model", model, "-o", tmp_path / "plan.json", check=False)
        assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "plan.json").exists()


@pytest.mark.slow
def test_an_optimizer_step_changes_exactly_the_trainable_parameters(model_dir, tokenizer, shapes, tmp_path):
    from transformers import AutoModelForCausalLM

    plan = hft_plan(shapes, ratio=0.5, seed=11)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainable_count = apply_hft_plan(model, tmp_path / "plan.json")
    assert trainable_count == plan["parameters"]["trainable"]
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    # All parameters go to the optimizer, with weight decay: freezing alone must keep the rest still.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    batch = tokenizer(["The capital of Australia is Canberra.", "48 - 40 = 8 cupcakes are left."],
                      return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    optimizer.step()
    changed = {name for name, param in model.named_parameters() if not torch.equal(param.detach(), before[name])}
    assert changed == set(plan["trainable"])


@pytest.mark.slow
def test_a_plan_for_another_model_is_refused(plain_model, tmp_path):
    other = hft_plan(parameter_shapes(str(config_folder(tmp_path, "qwen2", QWEN2_SMALL)))[0])
    with pytest.raises(FtprepError, match="the HFT plan does not fit this model"):
        apply_hft_plan(plain_model, other)


def test_hft_plan_runs_through_the_runner_like_any_output(tmp_path):
    """A rerun finds the plan complete; other settings, a damaged plan and a file ftprep did not
    write are each handled as they are for a dataset folder; a damaged plan is not applied."""
    folder = config_folder(tmp_path, "llama-8b", LLAMA_8B)
    plan, record = tmp_path / "plan.json", tmp_path / "plan.json.ftprep.json"
    run_cli("hft-plan", "--model", folder, "-o", plan)
    manifest = json.loads(record.read_text())
    assert manifest["stage"] == "hft-plan" and set(manifest["files"]) == {"plan.json"} and manifest["config"]["seed"] == 0
    again = run_cli("hft-plan", "--model", folder, "-o", plan)
    assert "already complete" in again.stdout and json.loads(record.read_text()) == manifest

    other = run_cli("hft-plan", "--model", folder, "-o", plan, "--seed", 1, check=False)
    assert other.returncode == 1 and "made with other settings or input (--seed 0 then, --seed 1 now)" in other.stderr
    assert ": pass --overwrite" in other.stderr
    run_cli("hft-plan", "--model", folder, "-o", plan, "--seed", 1, "--overwrite")
    assert json.loads(plan.read_text())["seed"] == 1

    plan.write_text(plan.read_text().replace('"seed": 1', '"seed": 2'))
    with pytest.raises(FtprepError, match="is damaged: plan.json"):
        apply_hft_plan(torch.nn.Linear(1, 1), plan)
    rewritten = run_cli("hft-plan", "--model", folder, "-o", plan, "--seed", 1)
    assert "is damaged" in rewritten.stdout and json.loads(plan.read_text())["seed"] == 1

    foreign = tmp_path / "mine.json"
    foreign.write_text("{}")
    refused = run_cli("hft-plan", "--model", folder, "-o", foreign, check=False)
    assert refused.returncode == 1 and "exists and is not an ftprep output" in refused.stderr and foreign.read_text() == "{}"
    assert not list(tmp_path.glob(".*ftprep-lock"))
