"""--strategy delta: mask the tokens whose perplexity rose from one model's scores to another's."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pytest
import torch
from conftest import DATA, flat, load_table, read_jsonl, run_cli, score_folder

from ftprep.against import match_rows
from ftprep.stages.mask import IGNORE_INDEX
from ftprep.writers import dataset_files, file_record, write_arrow_atomic

EOT = 2  # <|im_end|> in SmolLM2
ROWS = 8


@pytest.fixture(scope="module")
def perturbed_model_dir(model_dir, tmp_path_factory):
    """The embedded model with seeded noise on its attention and feed-forward weights: a second model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("q_proj.weight", "down_proj.weight")):
                param.add_(torch.randn(param.shape, generator=generator) * 0.15 * param.std())
    folder = tmp_path_factory.mktemp("perturbed") / "model"
    model.save_pretrained(folder)
    for tokenizer_file in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(f"{model_dir}/{tokenizer_file}", folder / tokenizer_file)
    return folder


@pytest.fixture(scope="module")
def scored_pair(tmp_path_factory, perturbed_model_dir):
    """The first 8 sample rows scored by the embedded model (3 rows a shard) and, in reverse order
    and one shard, by the perturbed one: the two layouts differ, the rows match only by id."""
    folder = tmp_path_factory.mktemp("pair")
    reversed_input = folder / "reversed.jsonl"
    reversed_input.write_text("".join(json.dumps(row) + "\n" for row in read_jsonl(DATA / "sample.jsonl")[:ROWS][::-1]))
    score_folder(DATA / "sample.jsonl", folder / "a", limit=ROWS, shard_rows=3)
    score_folder(reversed_input, folder / "b", model=str(perturbed_model_dir))
    return folder / "a", folder / "b"


def by_id(table, name):
    return dict(zip(table.column("id").to_pylist(), table.column(name).to_pylist()))


@pytest.mark.slow
def test_delta_masks_assistant_tokens_whose_perplexity_rose_by_more_than_d(scored_pair, tmp_path):
    scored_a, scored_b = scored_pair
    delta = 0.5
    run_cli("mask", scored_a, "-o", tmp_path / "train", "--strategy", "delta", "--against", scored_b,
            "--delta", delta, "--min-kept", 0)
    # By hand, row by row, matching B's rows to A's by id.
    table_a, table_b = load_table(scored_a), load_table(scored_b)
    logprobs_b = by_id(table_b, "logprobs")
    expected_labels, masked, candidates = [], 0, 0
    for row in table_a.to_pylist():
        ids = np.asarray(row["input_ids"])
        assert ids.tolist() == by_id(table_b, "input_ids")[row["id"]]
        ppl_a = np.exp(-np.asarray(row["logprobs"], dtype=np.float64))
        ppl_b = np.exp(-np.asarray(logprobs_b[row["id"]], dtype=np.float64))
        assistant = np.asarray(row["assistant_mask"], dtype=bool)
        row_masked = assistant & (ids != EOT) & (ppl_b - ppl_a > delta)
        expected_labels.append(np.where(assistant & ~row_masked, ids, IGNORE_INDEX))
        masked += row_masked.sum()
        candidates += (assistant & (ids != EOT)).sum()
    assert 0 < masked < candidates  # the perturbation moves some tokens past D, not all
    np.testing.assert_array_equal(flat(load_table(tmp_path / "train"), "labels"), np.concatenate(expected_labels))
    stats = json.loads((tmp_path / "train" / "stats.json").read_text())
    assert stats["masked_tokens"] == masked
    assert stats["masked_share"] == pytest.approx(masked / stats["assistant_tokens"])
    manifest = json.loads((tmp_path / "train" / "ftprep.json").read_text())
    assert manifest["config"]["strategy"] == "delta" and manifest["against"]["path"] == str(scored_b.resolve())
    print(f"delta {delta} on {ROWS} rows: {stats['masked_share']:.1%} of assistant tokens masked")


@pytest.mark.slow
def test_against_itself_nothing_rises(scored_pair, tmp_path):
    scored_a, _ = scored_pair
    run_cli("mask", scored_a, "-o", tmp_path / "train", "--strategy", "delta", "--against", scored_a, "--delta", 0)
    assert json.loads((tmp_path / "train" / "stats.json").read_text())["masked_tokens"] == 0


def test_repeated_ids_match_in_order_of_appearance():
    ids = np.array(["a", "b", "a", "c", "a"], dtype=object)
    against = np.array(["a", "c", "a", "b", "x", "a"], dtype=object)
    np.testing.assert_array_equal(match_rows(ids, against), [0, 3, 2, 1, 5])
    np.testing.assert_array_equal(match_rows(np.array(["a", "a", "z"], dtype=object), np.array(["a"], dtype=object)), [0, -1, -1])
    np.testing.assert_array_equal(match_rows(np.array(["a"], dtype=object), np.array([], dtype=object)), [-1])


def tampered_copy(folder, target, change_row):
    """A copy of a scored folder whose first row is changed by `change_row(row) -> row`."""
    shutil.copytree(folder, target)
    path = dataset_files(target)[0]
    rows = load_table(target).to_pylist()
    rows[0] = change_row(rows[0])
    write_arrow_atomic(path, pa.Table.from_pylist(rows, schema=load_table(folder).schema))
    # Rewritten on purpose: record the new file as the folder's own, or it reads as damaged.
    manifest = json.loads((target / "ftprep.json").read_text())
    manifest["files"][path.name] = file_record(path)
    (target / "ftprep.json").write_text(json.dumps(manifest))
    return target


@pytest.mark.parametrize("change, message", [
    (lambda row: {**row, "id": "renamed"}, "has no row for id 'sample-008'"),
    (lambda row: {**row, "input_ids": [row["input_ids"][0] + 1, *row["input_ids"][1:]]}, "has other input_ids in"),
    (lambda row: {**row, "logprobs": [None if a else lp for a, lp in zip(row["assistant_mask"], row["logprobs"])]},
     "assistant tokens that"),
])
@pytest.mark.slow
def test_rows_that_do_not_match_stop_with_one_line(scored_pair, tmp_path, change, message):
    scored_a, scored_b = scored_pair
    broken = tampered_copy(scored_b, tmp_path / "broken", change)
    result = run_cli("mask", scored_a, "-o", tmp_path / "train", "--strategy", "delta", "--against", broken, check=False)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "train").exists()  # checked before anything is written


@pytest.mark.slow
def test_against_goes_with_delta_only(scored_pair, tmp_path):
    scored_a, scored_b = scored_pair
    missing = run_cli("mask", scored_a, "-o", tmp_path / "x", "--strategy", "delta", check=False)
    assert missing.returncode == 1 and "error: --strategy delta needs --against" in missing.stderr
    stray = run_cli("mask", scored_a, "-o", tmp_path / "y", "--against", scored_b, check=False)
    assert stray.returncode == 1 and "error: --against is read only by --strategy delta" in stray.stderr
    not_scored = run_cli("mask", scored_a, "-o", tmp_path / "z", "--strategy", "delta", "--against", DATA, check=False)
    assert not_scored.returncode == 1 and "is not a scored dataset" in not_scored.stderr
