"""`ftprep regen` end to end on CPU with the embedded model and data/arithmetic.jsonl."""

import json

import numpy as np
import pytest
from conftest import DATA, load_table, read_jsonl, run_cli

from ftprep.stages.regen.checks import final_number

ARITHMETIC = DATA / "arithmetic.jsonl"
FAST = ["--max-new-tokens", "64", "--n", "4", "--verify", "math"]
ROWS = 8


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    output = tmp_path_factory.mktemp("regen") / "arithmetic"
    run_cli("regen", ARITHMETIC, "-o", output, "--limit", ROWS, "--seed", 1, *FAST)
    return output


@pytest.mark.slow
def test_every_row_is_kept_and_rewrites_pass_the_checks(regenerated):
    rows = load_table(regenerated).to_pylist()
    source = read_jsonl(ARITHMETIC)[:ROWS]
    stats = json.loads((regenerated / "stats.json").read_text())
    assert [row["id"] for row in rows] == [row["id"] for row in source]  # nothing dropped, order kept
    assert stats["rows_in"] == stats["rows_out"] == ROWS and stats["candidates_tried"] == 4 * ROWS
    for row, original in zip(rows, source):
        kept, truth = row["messages"][-1]["content"], original["messages"][-1]["content"]
        # Stored messages carry a `tool` field, null for these plain turns.
        assert [{"role": m["role"], "content": m["content"]} for m in row["messages"][:-1]] == original["messages"][:-1]
        assert all(message["tool"] is None for message in row["messages"])
        assert row["rewritten_turns"][0]["ground_truth"] == truth
        if row["source"] == "generated":
            assert row["candidates_accepted"] > 0 and row["rewritten_turns"][0]["source"] == "generated"
            assert final_number(kept) == final_number(truth)  # --verify math held
            assert "reference" not in kept.lower()
            assert 1 / 3 <= len(kept) / len(truth) <= 3
            assert row["kept_perplexity"] < row["ground_truth_perplexity"]
        else:
            assert kept == truth and row["candidates_accepted"] == 0
    generated = sum(row["source"] == "generated" for row in rows)
    assert 0 < generated < ROWS, "the 135M model gets some of these right and some wrong"
    assert stats["turns_generated"] == generated
    assert stats["candidates_accepted"] == sum(row["candidates_accepted"] for row in rows)
    assert sum(stats["candidate_rejections"].values()) + stats["candidates_accepted"] == stats["candidates_tried"]
    assert stats["acceptance_rate"] == pytest.approx(stats["candidates_accepted"] / (4 * ROWS))


def mean_perplexities(folder):
    rows = [row for row in load_table(folder).to_pylist() if row["source"] == "generated"]
    stats = json.loads((folder / "stats.json").read_text())
    kept = np.array([row["kept_perplexity"] for row in rows])
    truth = np.array([row["ground_truth_perplexity"] for row in rows])
    print(f"\n{folder.name}: mean perplexity over the {len(rows)} rewritten rows: ground truth {truth.mean():.3f}, "
          f"kept {kept.mean():.3f}; over all {stats['turns']} turns: ground truth "
          f"{stats['ground_truth_mean_perplexity']:.3f}, kept {stats['kept_mean_perplexity']:.3f}")
    return kept, truth, stats


@pytest.mark.slow
def test_kept_rewrites_are_likelier_than_the_ground_truth(regenerated):
    kept, truth, stats = mean_perplexities(regenerated)
    assert (kept < truth).all()  # the default rule, checked on every kept rewrite
    assert stats["kept_mean_perplexity"] < stats["ground_truth_mean_perplexity"]


@pytest.mark.slow
def test_the_models_own_answers_are_likelier_even_without_the_rule(tmp_path):
    # Self-distillation's premise, measured without --beat-ground-truth deciding it: the
    # model's own verified answers to the original prompt have lower perplexity than the data's.
    output = tmp_path / "self"
    run_cli("regen", ARITHMETIC, "-o", output, "--limit", ROWS, "--seed", 1, "--mode", "self", "--no-beat-ground-truth", *FAST)
    kept, truth, stats = mean_perplexities(output)
    assert len(kept) >= 1 and stats["candidate_rejections"].get("not_likelier") is None
    assert kept.mean() < truth.mean()


@pytest.mark.slow
def test_same_seed_same_output_and_another_seed_differs(tmp_path):
    def regen(name, seed):
        run_cli("regen", ARITHMETIC, "-o", tmp_path / name, "--limit", 2, "--seed", seed, *FAST, "--n", 2)
        stats = json.loads((tmp_path / name / "stats.json").read_text())
        return load_table(tmp_path / name), {key: stats[key] for key in ("generated_tokens", "candidate_rejections")}

    (first, first_stats), (second, second_stats) = regen("first", 1), regen("again", 1)
    assert first == second and first_stats == second_stats
    other, other_stats = regen("other", 2)
    # Other samples: other lengths, other verdicts, or other rewrites kept.
    assert other_stats != first_stats or other.column("messages").to_pylist() != first.column("messages").to_pylist()


@pytest.mark.slow
def test_candidates_that_cannot_finish_fall_back_to_the_ground_truth(tmp_path):
    output = tmp_path / "short"
    run_cli("regen", ARITHMETIC, "-o", output, "--limit", 3, "--max-new-tokens", 3, "--n", 2)
    rows = load_table(output).to_pylist()
    plain = [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in rows]
    assert plain == [row["messages"] for row in read_jsonl(ARITHMETIC)[:3]]
    assert {row["source"] for row in rows} == {"ground_truth"}
    stats = json.loads((output / "stats.json").read_text())
    assert stats["candidate_rejections"] == {"token_limit": 6}


@pytest.mark.slow
def test_regen_then_score_then_mask(regenerated, tmp_path):
    scored, train = tmp_path / "scored", tmp_path / "train"
    run_cli("score", regenerated, "-o", scored)
    run_cli("mask", scored, "-o", train)
    table = load_table(scored)
    assert table.column("messages").to_pylist() == load_table(regenerated).column("messages").to_pylist()
    assert load_table(train).num_rows == ROWS
    shown = run_cli("inspect", regenerated, "--row", 0).stdout
    row = load_table(regenerated).slice(0, 1).to_pylist()[0]
    assert "ground truth" in shown and f"kept ({row['source']})" in shown
    assert row["rewritten_turns"][0]["ground_truth"].split()[0] in shown


@pytest.mark.parametrize("args, message", [
    (["--template", "missing.txt"], "--template missing.txt does not exist"),
    (["--verify", "regex"], "--verify regex needs --pattern"),
    (["--verify", "regex", "--pattern", "(oops"], "--pattern is not a valid regular expression"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, message):
    result = run_cli("regen", ARITHMETIC, "-o", tmp_path / "out", *args, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {message}" or result.stderr.strip().startswith(f"error: {message}")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_user_template_is_used_and_checked(tmp_path):
    template = tmp_path / "template.txt"
    template.write_text("Question: {instruction}\nA model answer: {reference}\nWrite a better one.")
    output = tmp_path / "custom"
    run_cli("regen", ARITHMETIC, "-o", output, "--limit", 2, "--template", template, "--max-new-tokens", 8, "--n", 1)
    manifest = json.loads((output / "ftprep.json").read_text())
    assert manifest["template"] == template.read_text()
    assert manifest["sampling"] == {"temperature": 0.7, "top_p": 0.95, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                                    "n": 1, "max_new_tokens": 8}
    template.write_text("Question only: {instruction}")
    result = run_cli("regen", ARITHMETIC, "-o", tmp_path / "bad", "--template", template, check=False)
    assert result.returncode != 0 and "lacks {reference}" in result.stderr and "Traceback" not in result.stderr
    assert "{reference}" in run_cli("regen", "--print-template").stdout


@pytest.mark.slow
def test_the_models_generation_config_does_not_change_sampling(tiny_model_dir, tokenizer):
    """transformers' generate fills what it is not told from generation_config.json; vLLM does not.
    ftprep tells it every knob, so a model that ships a repetition penalty and a top-k samples the
    same as one that does not (issue 13)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftprep.stages.regen.generate import HFGenerator, Sampling, hf_generation_kwargs, vllm_sampling_kwargs

    sampling = Sampling(n=3, max_new_tokens=12)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Count to five."}], tokenize=False, add_generation_prompt=True)
    prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    samples = {}
    for shipped in ({}, {"repetition_penalty": 3.0, "top_k": 2, "min_p": 0.3}):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        model.generation_config.update(**shipped)
        candidates = HFGenerator(model, tokenizer, sampling, budget_tokens=4096)([prompt], [5])[0]
        samples[bool(shipped)] = [candidate.text for candidate in candidates]
    assert samples[True] == samples[False] and len(set(samples[False])) > 1
    # Both backends are given the same values for the knobs they share.
    hf, vllm = hf_generation_kwargs(sampling), vllm_sampling_kwargs(sampling)
    assert {key: hf[key] for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")} == \
        {key: vllm[key] for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
    assert (hf["max_new_tokens"], hf["num_return_sequences"]) == (vllm["max_tokens"], vllm["n"]) == (12, 3)
