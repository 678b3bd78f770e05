"""The hf backend scores every causal-LM family as the model's own forward pass does.

Small random-weight models of ten families, built from their transformers config classes,
with weights scaled up and each family's quirks (Gemma 2's attention and final softcapping,
Cohere's logit_scale, Granite's multipliers and logits_scaling, Gemma's embedding scale,
sliding windows) set so that ignoring one moves logprobs by whole nats. The reference is one
plain unbatched forward pass in float32 with eager attention.
"""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import DATA, REPO, flat, hf_scorer, load_table, reference_logprobs, run_cli

from ftprep.models import attention_implementation, load_model
from ftprep.stages import flat_values

VOCAB = 512
SMALL = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)


def family_configs() -> dict:
    from transformers import (
        CohereConfig,
        Gemma2Config,
        Gemma3TextConfig,
        GraniteConfig,
        LlamaConfig,
        MistralConfig,
        Olmo2Config,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    windowed = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    return {
        "llama": LlamaConfig(**SMALL),
        "qwen2": Qwen2Config(**SMALL),
        "qwen3": Qwen3Config(**SMALL),
        "mistral": MistralConfig(**SMALL, sliding_window=8),
        "phi3": Phi3Config(**{key: value for key, value in SMALL.items() if key != "head_dim"}),
        "gemma2": Gemma2Config(**SMALL, **windowed, attn_logit_softcapping=3.0, final_logit_softcapping=4.0,
                               query_pre_attn_scalar=4),
        "gemma3": Gemma3TextConfig(**SMALL, **windowed, query_pre_attn_scalar=4),
        "cohere": CohereConfig(**SMALL, logit_scale=6.0),
        "granite": GraniteConfig(**SMALL, embedding_multiplier=6.0, attention_multiplier=0.5, residual_multiplier=0.7,
                                 logits_scaling=0.25),
        "olmo2": Olmo2Config(**SMALL),
    }


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    folders = {}
    for name, config in family_configs().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # scaled up: each family's quirk then moves logprobs by whole nats
            for parameter in model.parameters():
                if parameter.dim() > 1:
                    parameter.mul_(8.0)
        folders[name] = tmp_path_factory.mktemp(name) / "model"
        model.save_pretrained(folders[name])
    return folders


def token_table(lengths=(40, 23, 31, 9), seed=0) -> pa.Table:
    """Rows of random token ids of several lengths, every position after a short prompt trainable."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(0, VOCAB, length).astype(np.int32) for length in lengths]
    masks = [np.r_[np.zeros(4, np.int8), np.ones(length - 4, np.int8)] for length in lengths]
    return pa.table({"input_ids": pa.array(ids, pa.list_(pa.int32())),
                     "assistant_mask": pa.array(masks, pa.list_(pa.int8()))})


def eager_reference(folder, table) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return np.concatenate([reference_logprobs(model, ids)[0] for ids in table.column("input_ids").to_pylist()])


@pytest.mark.parametrize("family", list(family_configs()))
@pytest.mark.slow
def test_every_family_scores_like_its_eager_forward_pass(family_dirs, family):
    table = token_table()
    # A small budget: several batches, right padding, rows of other lengths beside each row.
    scored = hf_scorer(family_dirs[family], batch_tokens=80)(table)
    logprobs = flat_values(scored, "logprobs")
    scored_positions = ~np.isnan(logprobs)
    assert scored_positions.sum() == sum(length - 4 for length in (40, 23, 31, 9))
    reference = eager_reference(family_dirs[family], table)
    difference = np.abs(logprobs[scored_positions] - reference[scored_positions])
    print(f"{family}: mean |diff| {difference.mean():.2e}, max {difference.max():.2e} nats")
    assert difference.mean() < 1e-4, f"{family}: mean |diff| {difference.mean():.2e} nats"
    # Not a flat distribution: the quirks below move these logprobs by whole nats.
    assert np.abs(reference[scored_positions]).std() > 0.5


@pytest.mark.parametrize("family, naive_attention", [("gemma2", "sdpa"), ("cohere", "eager"), ("granite", "eager")])
@pytest.mark.slow
def test_the_quirks_matter_so_the_test_above_can_fail(family_dirs, family, naive_attention):
    """What ftprep computed before: decoder (SDPA) + LM head alone. It is whole nats off."""
    from transformers import AutoModelForCausalLM

    folder, table = family_dirs[family], token_table()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=naive_attention).eval()
    naive = []
    for ids in table.column("input_ids").to_pylist():
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state
            logprobs = torch.log_softmax(model.get_output_embeddings()(hidden)[0], dim=-1)
        naive.append(np.r_[np.nan, logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()])
    reference = eager_reference(folder, table)
    positions = ~np.isnan(reference)
    assert np.abs(np.concatenate(naive)[positions] - reference[positions]).mean() > 0.1


@pytest.mark.slow
def test_eager_attention_where_sdpa_drops_softcapping(family_dirs):
    from transformers import AutoConfig

    assert attention_implementation(AutoConfig.from_pretrained(family_dirs["gemma2"])) == "eager"
    assert load_model(str(family_dirs["gemma2"]), "float32", "cpu").config._attn_implementation == "eager"
    for family in ("llama", "gemma3", "cohere"):
        assert attention_implementation(AutoConfig.from_pretrained(family_dirs[family])) == "sdpa"


# -- a real second family: Gemma 3 270M, a base model, with a chat template given --------

GEMMA_TEMPLATE = "data/templates/gemma-turns.jinja"


@pytest.fixture(scope="module")
def gemma_scored(tmp_path_factory):
    """Three short rows of data/sample.jsonl scored by Gemma 3 270M (assembled from its PyPI parts
    and converted once into the ftprep cache) with a Gemma-style turn template."""
    output = tmp_path_factory.mktemp("gemma") / "scored"
    run_cli("score", DATA / "sample.jsonl", "-o", output, "--model", "gemma3-270m", "--chat-template", GEMMA_TEMPLATE,
            "--limit", 3, "--backend", "hf", "--dtype", "float32")
    return output


@pytest.mark.slow  # runs the model where the fast tier's guard cannot see it (another process, vLLM)
def test_a_base_model_needs_a_chat_template(tmp_path):
    result = run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", "--model", "gemma3-270m", "--limit", 1,
                     "--backend", "hf", check=False)
    assert result.returncode == 1
    assert "no chat template" in result.stderr and "--chat-template" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_gemma3_270m_scores_like_its_eager_forward_pass_with_bounded_logits(gemma_scored):
    from transformers import AutoModelForCausalLM

    from ftprep.stages.score.hf import CHUNK_ELEMENTS

    manifest = json.loads((gemma_scored / "ftprep.json").read_text())
    assert manifest["config"]["chat_template"].endswith("gemma-turns.jinja")
    assert manifest["model"]["attention"] == "sdpa"
    table = load_table(gemma_scored)
    assert table.num_rows == 3
    first = table.column("input_ids")[0].as_py()
    assert first[:3] == [2, 105, 2364]  # <bos><start_of_turn>user: the template's, not the tokenizer's default

    model_dir = manifest["model"]["path"]
    scorer = hf_scorer(model_dir)
    vocab = scorer.model.get_output_embeddings().weight.shape[0]
    assert vocab >= 5 * 49152  # five times the demo model's vocabulary
    logits_sizes = []
    scorer.model.get_output_embeddings().register_forward_hook(lambda module, args, out: logits_sizes.append(out.numel()))
    rescored = scorer(table.select(["input_ids", "assistant_mask"]))
    # Peak logits: one chunk of positions x vocab, however many positions a batch scores.
    assert max(logits_sizes) <= CHUNK_ELEMENTS < int(flat(table, "assistant_mask").sum()) * vocab
    assert len(logits_sizes) > 3

    stored = flat(table, "logprobs")
    scored = ~np.isnan(stored)
    assert np.array_equal(flat(rescored, "logprobs")[scored], stored[scored])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    reference = np.concatenate([reference_logprobs(model, ids)[0] for ids in table.column("input_ids").to_pylist()])
    difference = np.abs(stored[scored] - reference[scored])
    print(f"gemma3-270m: mean |diff| {difference.mean():.2e}, max {difference.max():.2e} nats over {scored.sum()} tokens")
    assert difference.mean() < 1e-4


@pytest.mark.slow
def test_a_resume_with_another_chat_template_is_refused(gemma_scored, tmp_path):
    other = tmp_path / "other.jinja"
    other.write_text((REPO / GEMMA_TEMPLATE).read_text().replace("'model'", "'assistant'"))
    result = run_cli("score", DATA / "sample.jsonl", "-o", gemma_scored, "--model", "gemma3-270m", "--chat-template", other,
                     "--limit", 3, "--backend", "hf", "--dtype", "float32", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert load_table(gemma_scored).num_rows == 3  # nothing lost


def test_a_missing_or_broken_chat_template_is_a_one_line_error(tmp_path):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for message in messages %}")
    for template, reason in ((tmp_path / "missing.jinja", "no such file"), (broken, "not a valid Jinja template")):
        result = run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / "out", "--limit", 1, "--chat-template", template,
                         check=False)
        assert result.returncode == 1 and reason in result.stderr and "Traceback" not in result.stderr
