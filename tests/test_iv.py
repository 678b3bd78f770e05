"""Instruction vectors: patching is measured right, the intervention and the KL behave, the CLI is reproducible."""

import copy
import json
import math

import pytest
import torch
from conftest import DATA, read_jsonl, run_cli

from ftprep.commands.iv import IVSettings
from ftprep.plans.iv import extract_instruction_vector, instruction_rows, pick_examples, read_instruction_vector, shuffle_words
from ftprep.stages.iv import AnswerScorer, add_instruction_vector, attention_layout, mean_head_outputs, patch_heads, top_heads
from ftprep.stages.tokenization import ChatTokenizer
from ftprep.trainer import (
    IGNORE_INDEX,
    IVGuidance,
    TokenWeightCollator,
    generation_header_ids,
    iv_kl_terms,
    prompt_end_positions,
    with_iv_guidance,
)

ARITHMETIC = [row["messages"] for row in read_jsonl(DATA / "arithmetic.jsonl")]


def tokenized(tokenizer, conversations):
    """(prompt ids, answer ids) per conversation, split where the assistant turn starts."""
    rows = ChatTokenizer(tokenizer, train_on="last")(conversations)
    starts = [int(row.assistant_mask.argmax()) for row in rows]
    return [(row.input_ids[:s].tolist(), row.input_ids[s:].tolist()) for row, s in zip(rows, starts)]


def training_rows(tokenizer, conversations):
    rows = ChatTokenizer(tokenizer)(conversations)
    return [{"input_ids": row.input_ids.tolist(),
             "labels": [int(t) if m else IGNORE_INDEX for t, m in zip(row.input_ids, row.assistant_mask)]} for row in rows]


@pytest.fixture(scope="module")
def model(plain_model):
    return plain_model


@pytest.mark.slow
def test_cached_batched_patched_scores_equal_one_plain_forward_per_row(model, tokenizer):
    examples = tokenized(tokenizer, ARITHMETIC[:3])
    prompts, answers = [p for p, _ in examples], [a for _, a in examples]
    assert len({len(p) for p in prompts}) > 1 and len({len(a) for a in answers}) > 1  # padding on both sides is exercised
    layout = attention_layout(model)
    values = torch.randn(2, layout.head_dim, generator=torch.Generator().manual_seed(0)) * 3
    # Two copies of each prompt: copy 0 patches head 2 of layer 3, copy 1 patches head 5.
    scorer = AnswerScorer(model, prompts, answers, answer_tokens=64, pad_id=tokenizer.pad_token_id, copies=2)
    copy = torch.arange(6) % 2
    unpatched = scorer()
    with patch_heads(layout, 3, torch.tensor([2, 5])[copy], values[copy], scorer.last_prompt_token):
        patched = scorer().view(3, 2)
    assert torch.equal(scorer(), unpatched)  # the cache is back to the prompts after each call

    for row, (prompt, answer) in enumerate(examples):
        ids = torch.tensor([prompt + answer])
        last = len(prompt) - 1
        for side, head in enumerate((2, 5)):
            with torch.no_grad(), patch_heads(layout, 3, torch.tensor([head]), values[side : side + 1], torch.tensor([last])):
                logprobs = torch.log_softmax(model(ids).logits[0, last:-1].float(), dim=-1)
            expected = logprobs.gather(1, torch.tensor(answer)[:, None]).sum()
            assert patched[row, side].item() == pytest.approx(expected.item(), abs=2e-3)
    assert (patched - unpatched.view(3, 2)).abs().max() > 1e-3

    # The clean means: what a plain forward of each prompt gives at its last token, averaged.
    means, logprobs = mean_head_outputs(layout, AnswerScorer(model, prompts, answers, 64, tokenizer.pad_token_id), [3])
    plain = []
    with torch.no_grad():
        handle = layout.o_proj[3].register_forward_pre_hook(lambda module, args: plain.append(args[0][0, -1]))
        for prompt in prompts:
            model(torch.tensor([prompt]))
        handle.remove()
    assert torch.allclose(means[3], torch.stack(plain).mean(0).view(layout.heads, layout.head_dim), atol=1e-4)
    assert torch.allclose(logprobs, unpatched.view(3, 2)[:, 0]) and means[4].abs().sum() == 0


@pytest.mark.slow
def test_intervention_changes_outputs_from_its_position_on(model, tokenizer):
    prompt, answer = tokenized(tokenizer, ARITHMETIC[:1])[0]
    ids, last = torch.tensor([prompt + answer]), len(prompt) - 1
    vector = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        plain = model(ids).logits
        with add_instruction_vector(model, {10: vector}, 1.0, torch.tensor([last])):
            steered = model(ids).logits
        with add_instruction_vector(model, {10: vector}, 0.0, torch.tensor([last])):
            unscaled = model(ids).logits
        with add_instruction_vector(model, {10: vector}):
            everywhere = model(ids).logits
        after = model(ids).logits
    assert torch.equal(steered[:, :last], plain[:, :last])  # causal: nothing before the position moves
    assert (steered[:, last:] - plain[:, last:]).abs().amax() > 0.1
    assert (everywhere[:, 0] - plain[:, 0]).abs().amax() > 0.1
    assert torch.equal(unscaled, plain) and torch.equal(after, plain)  # scale 0 and a closed context leave no hook


@pytest.mark.slow
def test_kl_is_exactly_zero_for_an_untouched_model_and_grows_with_the_iv(model, tokenizer):
    batch = TokenWeightCollator(tokenizer.pad_token_id)(training_rows(tokenizer, ARITHMETIC[:2]))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    positions = prompt_end_positions(batch["input_ids"], batch["labels"], batch["attention_mask"], generation_header_ids(tokenizer))
    vector = {8: torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(2)) * 4}

    def logits(iv, scale):
        with torch.no_grad(), add_instruction_vector(model, iv, scale, positions):
            return model(**inputs).logits

    plain = logits({}, 1.0)
    for reference in (logits({8: torch.zeros_like(vector[8])}, 1.0), logits({}, 1.0)):
        assert [term.item() for term in iv_kl_terms(plain, reference, positions, batch["attention_mask"])] == [0.0, 0.0]
    # At the first step the trained model carries the full IV too: the two runs agree exactly.
    assert [t.item() for t in iv_kl_terms(logits(vector, 1.0), logits(vector, 1.0), positions, batch["attention_mask"])] == [0.0, 0.0]
    half, full = (iv_kl_terms(logits(vector, s), logits(vector, 1.0), positions, batch["attention_mask"]) for s in (0.5, 0.0))
    assert 0 < half[0] < full[0] and 0 < half[1] < full[1]


def test_last_prompt_token_is_found_when_the_first_answer_tokens_are_masked(tokenizer):
    header = generation_header_ids(tokenizer)
    assert tokenizer.decode(header) == "<|im_start|>assistant\n"
    rows = training_rows(tokenizer, ARITHMETIC[:2])
    starts = [next(i for i, label in enumerate(row["labels"]) if label != IGNORE_INDEX) for row in rows]
    rows[0]["labels"][starts[0]: starts[0] + 3] = [IGNORE_INDEX] * 3  # as STM masks high-perplexity first tokens
    batch = TokenWeightCollator(tokenizer.pad_token_id)(rows)
    with_header = prompt_end_positions(batch["input_ids"], batch["labels"], batch["attention_mask"], header)
    without = prompt_end_positions(batch["input_ids"], batch["labels"], batch["attention_mask"])
    assert with_header.tolist() == [starts[0] - 1, starts[1] - 1]
    assert without.tolist() == [starts[0] + 2, starts[1] - 1]


def test_only_heads_that_help_are_kept_best_first():
    effects = torch.tensor([[0.2, -0.1, float("nan")], [0.5, 0.2, 0.0]])
    assert top_heads(effects, 10) == [(1, 0, 0.5), (0, 0, pytest.approx(0.2)), (1, 1, pytest.approx(0.2))]
    assert top_heads(effects, 1) == [(1, 0, 0.5)]


def test_reference_placement_adds_the_summed_iv_at_one_layer():
    parts = {3: torch.tensor([1.0, 2.0]), 7: torch.tensor([0.5, -1.0])}
    assert IVGuidance(parts).placed_vectors() is parts  # default: each part at its own layer
    placed = IVGuidance(parts, edit_layer=9).placed_vectors()
    assert list(placed) == [9] and placed[9].tolist() == [1.5, 1.0]


def test_iv_weight_decays_linearly_to_zero():
    guidance = IVGuidance({})
    assert [guidance.scale_at(step, 10) for step in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]


@pytest.mark.slow
def test_iv_guided_trainer_trains_and_keeps_its_reference(model_dir, tokenizer, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    original = copy.deepcopy(model.state_dict())
    guidance = IVGuidance({8: torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(3)) * 4},
                          generation_header_ids(tokenizer), kl_floor=0.0)
    trainer = with_iv_guidance(SFTTrainer)(  # as the README shows it
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                       report_to=[], save_strategy="no", remove_unused_columns=False, learning_rate=1e-4),
        train_dataset=datasets.Dataset.from_list(training_rows(tokenizer, ARITHMETIC[:4])),
        processing_class=tokenizer,
        data_collator=TokenWeightCollator(tokenizer.pad_token_id),
        iv_guidance=guidance,
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss) and trainer.state.global_step == 2
    assert trainer.iv_last_step["iv_scale"] == 0.5 and trainer.iv_last_step["iv_penalty"] > 0
    reference = trainer.iv_reference.state_dict()
    assert all(torch.equal(reference[name], tensor) for name, tensor in original.items())
    assert not torch.equal(model.state_dict()["model.layers.0.self_attn.q_proj.weight"], original["model.layers.0.self_attn.q_proj.weight"])


def test_shuffled_instruction_keeps_its_words_in_another_order():
    import random

    text = "Each box holds 6 eggs. How many eggs are in 4 boxes?"
    shuffled = shuffle_words(text, random.Random(0))
    assert shuffled != text and sorted(shuffled.split()) == sorted(text.split())
    assert shuffle_words("eggs eggs", random.Random(0)) is None
    assert shuffle_words("two words", random.Random(0)) == "words two"  # the only other order


@pytest.mark.slow
def test_cli_writes_vector_heads_and_scores_reproducibly(tmp_path):
    settings = {"prompts": 6, "layers": "13-14", "heads": 4, "seed": 1}
    first = run_cli("iv", DATA / "arithmetic.jsonl", "-o", tmp_path / "a.safetensors",
                    *[item for key, value in settings.items() for item in (f"--{key}", value)])
    assert "a.safetensors: 4 heads" in first.stdout
    again = extract_instruction_vector(IVSettings(input=str(DATA / "arithmetic.jsonl"), output=str(tmp_path / "b.safetensors"), **settings))

    report = json.loads((tmp_path / "a.json").read_text())
    vectors, metadata = read_instruction_vector(tmp_path / "a.safetensors")
    vectors_again, _ = read_instruction_vector(tmp_path / "b.safetensors")
    assert report["heads"] == metadata["heads"] == again["heads"] and report["scores"] == again["scores"]
    assert vectors.keys() == vectors_again.keys() and all(torch.equal(vectors[layer], vectors_again[layer]) for layer in vectors)

    heads, scores = report["heads"], report["scores"]
    assert len(heads) == 4 and [h["score"] for h in heads] == sorted((h["score"] for h in heads), reverse=True)
    assert all(scores[h["layer"]][h["head"]] == h["score"] for h in heads)
    assert all(score is not None for layer in (13, 14) for score in scores[layer]) and scores[12] == [None] * 9
    assert max(score for row in scores[13:15] for score in row) == heads[0]["score"] > 0
    assert sorted(vectors) == sorted({h["layer"] for h in heads})
    assert all(vector.shape == (576,) and vector.norm() > 0 for vector in vectors.values())
    assert metadata["model_fingerprint"] == report["model"]["fingerprint"] and len(report["prompts"]) == 6
    for prompt in report["prompts"]:
        assert prompt["corrupted"] != prompt["instruction"]
        assert sorted(prompt["corrupted"].split()) == sorted(prompt["instruction"].split())


def test_the_seed_picks_the_prompts_and_their_shuffles(tokenizer):
    import random

    candidates, skipped = instruction_rows(enumerate(read_jsonl(DATA / "arithmetic.jsonl")), "messages")
    assert len(candidates) == 24 and not skipped

    def pick(seed):
        return pick_examples(candidates, ChatTokenizer(tokenizer, train_on="last"), 6, random.Random(seed))

    first, again, other = pick(1), pick(1), pick(2)
    assert first == again and [e["id"] for e in first] != [e["id"] for e in other]
    answers = {identifier: messages[-1]["content"] for identifier, messages in candidates}
    for example in first:
        assert example["prompt"] != example["corrupted_prompt"]
        assert tokenizer.decode(example["answer"]).startswith(answers[example["id"]])


@pytest.mark.parametrize("args, message", [
    (["missing.jsonl", "-o", "{tmp}/iv.safetensors"], "error: input not found: missing.jsonl"),
    (["{tmp}/no_answers.jsonl", "-o", "{tmp}/iv.safetensors"],
     "has no row with a user instruction and an assistant answer (left out: 3 no assistant turn)"),
    ([str(DATA / "arithmetic.jsonl"), "-o", "{tmp}/iv.safetensors", "--prompts", "30"],
     "has 24 rows with a user instruction and an assistant answer, --prompts 30 needs as many"),
    ([str(DATA / "arithmetic.jsonl"), "-o", "{tmp}/iv.bin"], "name a .safetensors file"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "no_answers.jsonl").write_text(
        "".join(json.dumps({"messages": [{"role": "user", "content": f"question {i} here"}]}) + "\n" for i in range(3)))
    result = run_cli("iv", *[arg.format(tmp=tmp_path) for arg in args], check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
