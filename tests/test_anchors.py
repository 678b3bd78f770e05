"""Anchors and reference distributions (AnchorLwF): compact top-k storage, mask --strategy anchor
in ftprep's and Axolotl's layouts, and the hybrid loss in ftprep.trainer."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, flat, load_table, run_cli

from ftprep.trainer import AnchorKLCollator, anchor_kl_loss, with_anchor_kl

K = 20


@pytest.fixture(scope="module")
def scored_topk(tmp_path_factory):
    folder = tmp_path_factory.mktemp("anchors") / "scored"
    run_cli("score", DATA / "sample.jsonl", "-o", folder, "--top-k", K, "--shard-rows", 16, "--backend", "hf")
    return folder


@pytest.fixture(scope="module")
def scores(scored_topk):
    """The scored sample as flat arrays, plus each token's row and top-k (None where it has none)."""
    table = load_table(scored_topk)
    eot = json.loads((scored_topk / "ftprep.json").read_text())["tokenizer"]["end_of_turn_ids"]
    ids = flat(table, "input_ids")
    return {
        "table": table,
        "ids": ids,
        "assistant": flat(table, "assistant_mask").astype(bool),
        "rank": flat(table, "rank"),
        "eot": np.isin(ids, eot) & flat(table, "assistant_mask").astype(bool),
        "lengths": [len(row) for row in table.column("input_ids").to_pylist()],
        "topk_ids": [tokens for row in table.column("topk_ids").to_pylist() for tokens in row],
        "topk_logprobs": [tokens for row in table.column("topk_logprobs").to_pylist() for tokens in row],
    }


def expected_anchors(scores, rule: str) -> np.ndarray:
    """Written the slow, obvious way: walk each row's assistant turns token by token."""
    assistant, rank, eot = scores["assistant"], scores["rank"], scores["eot"]
    anchors = np.zeros(len(assistant), dtype=bool)
    start = 0
    for length in scores["lengths"]:
        in_turn = found = False
        for t in range(start, start + length):
            if not assistant[t]:
                in_turn = False
                continue
            if not in_turn:
                in_turn, found = True, False
            if eot[t]:
                anchors[t] = True  # --keep-eos, the default
            elif rank[t] > 1 and (rule == "all" or not found):
                anchors[t] = found = True
        start += length
    return anchors


def mask_anchor(scored, folder, *extra):
    run_cli("mask", scored, "-o", folder, "--strategy", "anchor", *extra)
    return load_table(folder), json.loads((folder / "stats.json").read_text())


# -- storage -------------------------------------------------------------------------------


@pytest.mark.slow
def test_topk_is_stored_as_int32_ids_and_float16_logprobs(scored_topk, scores):
    import pyarrow as pa

    table = scores["table"]
    assert table.schema.field("topk_ids").type == pa.list_(pa.list_(pa.int32()))
    assert table.schema.field("topk_logprobs").type == pa.list_(pa.list_(pa.float16()))
    stats = json.loads((scored_topk / "stats.json").read_text())
    measured = sum(table.column(name).nbytes for name in ("topk_ids", "topk_logprobs"))
    assert stats["topk_bytes"] == measured
    assert stats["topk_bytes_per_token"] == pytest.approx(measured / stats["scored_tokens"])
    # K x (4 + 2) bytes of values per scored token, plus 4-byte list offsets for every token.
    offsets_per_scored = 2 * 4 * (len(scores["ids"]) + 2 * table.num_rows) / stats["scored_tokens"]
    assert K * 6 < stats["topk_bytes_per_token"] <= K * 6 + offsets_per_scored
    print(f"top-{K}: {stats['topk_bytes_per_token']:.1f} bytes per scored token "
          f"(float32 logprobs would take {stats['topk_bytes_per_token'] + 2 * K:.1f})")


# -- mask --strategy anchor ----------------------------------------------------------------


@pytest.mark.parametrize("rule", ["first", "all"])
@pytest.mark.slow
def test_anchors_are_the_tokens_ranked_below_the_greedy_choice(scored_topk, scores, tmp_path, rule):
    table, stats = mask_anchor(scored_topk, tmp_path / rule, "--anchors", rule, "--confidence", 0.75, "--min-kept", 0)
    assert table.column_names == ["input_ids", "attention_mask", "labels", "ref_topk_ids", "ref_topk_logprobs",
                                  "kl_mask", "anchor_confidence"]
    ids, assistant, rank = scores["ids"], scores["assistant"], scores["rank"]
    anchors = expected_anchors(scores, rule)
    np.testing.assert_array_equal(flat(table, "input_ids"), ids)
    np.testing.assert_array_equal(flat(table, "labels"), np.where(anchors, ids, -100))
    kl = assistant & ~anchors & (rank > 0)
    np.testing.assert_array_equal(flat(table, "kl_mask"), kl.astype(np.int8))
    np.testing.assert_array_equal(flat(table, "anchor_confidence"), np.where(anchors, np.float32(0.75), 0))
    # The reference top-k stays exactly where a loss reads it, unshifted (aligned with labels).
    kept_ids = [tokens for row in table.column("ref_topk_ids").to_pylist() for tokens in row]
    kept_logprobs = [tokens for row in table.column("ref_topk_logprobs").to_pylist() for tokens in row]
    for t in np.flatnonzero(anchors | kl):
        assert kept_ids[t] == scores["topk_ids"][t] and kept_logprobs[t] == scores["topk_logprobs"][t]
        assert kept_ids[t][0] == ids[t] or rank[t] > 1  # the greedy token is the top-1 entry
    assert all(not kept_ids[t] for t in np.flatnonzero(~(anchors | kl)))
    assert stats["anchor_tokens"] == anchors.sum() and stats["kl_tokens"] == kl.sum()
    assert stats["rows_out"] == 40
    wrong = assistant & (rank > 1) & ~scores["eot"]
    print(f"--anchors {rule}: {anchors.sum()} anchors ({wrong.sum()} tokens ranked > 1), {kl.sum()} KL tokens")


@pytest.mark.slow
def test_first_keeps_one_anchor_per_turn_and_all_keeps_every_wrong_token(scores):
    first, every = expected_anchors(scores, "first"), expected_anchors(scores, "all")
    # The sample must tell the rules apart, or the test above could not fail on a swapped rule.
    assert (first <= every).all() and first.sum() < every.sum()
    wrong = scores["assistant"] & (scores["rank"] > 1) & ~scores["eot"]
    np.testing.assert_array_equal(every & ~scores["eot"], wrong)


def synthetic_scored(ranks_by_row, assistant_by_row, ids_by_row, k=2):
    """A scored table without a model: top-k ids 100.. and uniform logprobs on assistant tokens."""
    import pyarrow as pa

    from ftprep.stages.score import score_columns

    offsets = np.concatenate([[0], np.cumsum([len(row) for row in ids_by_row])])
    assistant = np.concatenate(assistant_by_row).astype(bool)
    positions = np.flatnonzero(assistant)
    rank = np.concatenate(ranks_by_row)[positions]
    topk_ids = (100 + np.arange(len(positions) * k).reshape(-1, k)).astype(np.int32)
    columns = score_columns(offsets, positions, -np.ones(len(positions)), np.zeros(len(positions)), rank, topk_ids,
                            np.full((len(positions), k), np.log(1 / (k + 1)), np.float32))
    return pa.table({"id": [str(i) for i in range(len(ids_by_row))],
                     "input_ids": pa.array(ids_by_row, pa.list_(pa.int32())),
                     "assistant_mask": pa.array(assistant_by_row, pa.list_(pa.int8())), **columns})


def test_turns_rows_and_rows_without_anchors_on_a_synthetic_table():
    import pyarrow as pa

    from ftprep.commands.mask import MaskSettings
    from ftprep.stages import Rejects
    from ftprep.stages.mask import MaskStage
    from ftprep.stages.mask_settings import MaskStageSettings

    eot = 2
    # Row 0: two turns (3..6 and 8..9, each ending with EOT); row 1: every token the greedy choice.
    table = synthetic_scored(
        ranks_by_row=[[0, 0, 0, 1, 3, 2, 4, 0, 5, 1], [0, 0, 1, 1, 1]],
        assistant_by_row=[[0, 0, 0, 1, 1, 1, 1, 0, 1, 1], [0, 0, 1, 1, 1]],
        ids_by_row=[[1, 5, 6, 7, 8, 9, eot, 10, 11, eot], [1, 5, 7, 8, eot]],
    )

    def run(**settings):
        config = MaskStageSettings.from_config(MaskSettings(scored="-", output="-", strategy="anchor", **settings).to_dict())
        rejects = Rejects()
        indexed = table.append_column("index", pa.array(range(table.num_rows), pa.int64()))
        out, stats = MaskStage(config, [eot])(indexed, rejects)
        return out, rejects.rows(), stats

    out, rejects, stats = run(anchors="first")
    assert out.column("labels").to_pylist() == [[-100, -100, -100, -100, 8, -100, eot, -100, 11, eot],
                                                [-100, -100, -100, -100, eot]]
    assert out.column("kl_mask").to_pylist() == [[0, 0, 0, 1, 0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0]]
    out, _, _ = run(anchors="all")
    assert out.column("labels").to_pylist()[0] == [-100, -100, -100, -100, 8, 9, eot, -100, 11, eot]
    # Without end-of-turn anchors, row 1 has no label at all: it still trains on its KL targets.
    out, rejects, stats = run(anchors="all", keep_eos=False)
    assert out.column("labels").to_pylist()[1] == [-100] * 5 and out.column("kl_mask").to_pylist()[1] == [0, 0, 1, 1, 1]
    assert out.column("labels").to_pylist()[0][6] == eot  # rank 4: an anchor on its own merit
    assert out.num_rows == 2 and not rejects
    # --min-kept counts tokens with any loss, labels or KL targets.
    _, rejects, _ = run(anchors="all", keep_eos=False, min_kept=4)
    assert [reject["index"] for reject in rejects] == [1]


@pytest.mark.slow
def test_axolotl_layout_is_shifted_and_renormalized(scored_topk, scores, tmp_path):
    folder = tmp_path / "axolotl"
    table, _ = mask_anchor(scored_topk, folder, "--target", "axolotl")
    assert table.column_names == ["input_ids", "attention_mask", "labels", "target_token_ids", "target_logprobs", "target_mask"]
    anchors = expected_anchors(scores, "all")  # the default rule
    kl = scores["assistant"] & ~anchors & (scores["rank"] > 0)
    np.testing.assert_array_equal(flat(table, "labels"), np.where(anchors, scores["ids"], -100))
    target_ids = [tokens for row in table.column("target_token_ids").to_pylist() for tokens in row]
    target_logprobs = [tokens for row in table.column("target_logprobs").to_pylist() for tokens in row]
    target_mask = [tokens for row in table.column("target_mask").to_pylist() for tokens in row]
    row_ends = set(np.cumsum(scores["lengths"]) - 1)
    held = 0
    for t in range(len(scores["ids"])):
        # Axolotl pairs hidden state t with target t: the distribution of token t + 1.
        if t not in row_ends and kl[t + 1]:
            held += 1
            assert target_ids[t] == scores["topk_ids"][t + 1] and target_mask[t] == [1] * K
            raw = np.asarray(scores["topk_logprobs"][t + 1], dtype=np.float64)
            # Stored in float16, like the raw ones: each rounded by at most 2^-11 of its size.
            np.testing.assert_allclose(target_logprobs[t], raw - np.log(np.exp(raw).sum()), rtol=2**-10, atol=1e-4)
            assert math.isclose(np.exp(target_logprobs[t]).sum(), 1.0, abs_tol=5e-3)
        else:
            assert target_ids[t] == target_logprobs[t] == target_mask[t] == []
    assert held == kl.sum() > 0
    config = run_cli("export-config", folder, "--target", "axolotl").stdout
    settings = {line.split("#")[0].strip() for line in config.splitlines()}
    assert {"- axolotl.integrations.kd.KDPlugin", "kd_trainer: true", "kd_beta: 1.0", "kd_normalize_topk: true",
            f"- path: {json.dumps(str(folder.resolve()))}", "type:"} <= settings
    refused = run_cli("export-config", folder, "--target", "trl", check=False)
    assert refused.returncode == 1 and "Axolotl's KD layout" in refused.stderr


@pytest.mark.slow
def test_one_line_errors(scored_sample, scored_topk, tmp_path):
    no_topk = run_cli("mask", scored_sample, "-o", tmp_path / "a", "--strategy", "anchor", check=False)
    assert no_topk.returncode == 1 and no_topk.stderr.count("\n") == 1
    assert "rescore with ftprep score --top-k 20" in no_topk.stderr
    for target in ("trl", "llama-factory"):
        refused = run_cli("mask", scored_topk, "-o", tmp_path / target, "--strategy", "anchor", "--target", target, check=False)
        assert refused.returncode == 1 and "cannot read the KL targets" in refused.stderr
    soft = run_cli("mask", scored_topk, "-o", tmp_path / "soft", "--strategy", "anchor", "--target", "axolotl",
                   "--confidence", 0.5, check=False)
    assert soft.returncode == 1 and "--confidence 1 only" in soft.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "soft").exists()
    # Each hint leads somewhere: the folder rescored with --top-k 20 (scored_topk), then --target hf (the KL
    # targets for ftprep.trainer) or axolotl (its KD plugin, --confidence 1), and --target hf for --confidence 0.5.
    for target, confidence in (("hf", 1), ("axolotl", 1), ("hf", 0.5)):
        out = tmp_path / f"{target}-{confidence}"
        run_cli("mask", scored_topk, "-o", out, "--strategy", "anchor", "--target", target, "--confidence", confidence, "-q")
        assert json.loads((out / "stats.json").read_text())["anchor_tokens"] > 0


# -- the loss ------------------------------------------------------------------------------


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def renorm(values):
    return [v / sum(values) for v in values]


@pytest.fixture
def small_batch():
    """One row of 5 positions over a vocabulary of 6, top-2 stored; logits at t - 1 predict token t.
    t=1: anchor, c=0.8, label 3 among its top-k; t=2: KL only; t=3: anchor, c=0.6, label 5 not in
    its top-k; t=4: anchor with c=1 (plain cross-entropy)."""
    torch.manual_seed(0)
    minus_inf = float("-inf")
    return {
        "logits": torch.randn(1, 5, 6, dtype=torch.float64),
        "labels": torch.tensor([[-100, 3, -100, 5, 0]]),
        "ref_topk_ids": torch.tensor([[[0, 0], [3, 1], [2, 4], [1, 2], [0, 4]]]),
        "ref_topk_logprobs": torch.tensor([[[minus_inf] * 2, [-0.5, -1.5], [-0.3, -2.0], [-0.7, -1.0], [-0.2, -2.5]]]),
        "kl_mask": torch.tensor([[0, 0, 1, 0, 0]]),
        "anchor_confidence": torch.tensor([[0.0, 0.8, 0.0, 0.6, 1.0]]),
    }


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_loss_equals_a_hand_computation(small_batch, direction):
    probs = torch.softmax(small_batch["logits"][0], dim=-1).tolist()
    # (position, support, reference probs on it, confidence, label)
    soft = [(1, [3, 1], [math.exp(-0.5), math.exp(-1.5)], 0.8, 3),
            (2, [2, 4], [math.exp(-0.3), math.exp(-2.0)], 0.0, None),
            (3, [1, 2, 5], [math.exp(-0.7), math.exp(-1.0), 0.0], 0.6, 5)]
    total = 0.0
    for t, support, ref, c, label in soft:
        reference = renorm(ref)
        target = [(1 - c) * r + (c if token == label else 0.0) for token, r in zip(support, reference)]
        student = renorm([probs[t - 1][token] for token in support])
        total += kl(student, target) if direction == "reverse" else kl(target, student)
    total += -math.log(probs[3][0])  # t=4, c=1: cross-entropy over the whole vocabulary
    got = anchor_kl_loss(**small_batch, direction=direction)
    assert got.item() == pytest.approx(total / 4, rel=1e-6)  # computed in float32


def test_confidence_one_everywhere_is_plain_cross_entropy_on_the_anchors(small_batch):
    batch = {**small_batch, "kl_mask": torch.zeros_like(small_batch["kl_mask"]),
             "anchor_confidence": torch.ones_like(small_batch["anchor_confidence"])}
    plain = F.cross_entropy(batch["logits"][0, :-1], batch["labels"][0, 1:], ignore_index=-100)
    for direction in ("reverse", "forward"):
        assert anchor_kl_loss(**batch, direction=direction).item() == pytest.approx(plain.item(), rel=1e-6)


def test_gradient_reaches_only_positions_that_predict_a_supervised_token(small_batch):
    logits = small_batch["logits"].clone().requires_grad_(True)
    batch = {**small_batch, "logits": logits, "labels": torch.tensor([[-100, 3, -100, -100, -100]])}
    anchor_kl_loss(**batch).backward()
    norms = logits.grad[0].norm(dim=-1)
    assert torch.isfinite(logits.grad).all()
    assert (norms[[0, 1]] > 0).all() and (norms[[2, 3, 4]] == 0).all()  # t=1 (anchor) and t=2 (KL) only


def test_collator_pads_the_reference_top_k():
    rows = [
        {"input_ids": [1, 7, 8], "labels": [-100, 7, -100], "ref_topk_ids": [[], [7, 3], [8, 4]],
         "ref_topk_logprobs": [[], [-0.25, -2.0], [-0.5, -1.0]], "kl_mask": [0, 0, 1], "anchor_confidence": [0.0, 0.5, 0.0]},
        {"input_ids": [1, 9], "labels": [-100, -100], "ref_topk_ids": [[], []], "ref_topk_logprobs": [[], []],
         "kl_mask": [0, 0], "anchor_confidence": [0.0, 0.0]},
    ]
    batch = AnchorKLCollator(pad_token_id=2)(rows)
    assert batch["ref_topk_ids"].shape == (2, 3, 2) and batch["ref_topk_ids"][0, 2].tolist() == [8, 4]
    assert batch["ref_topk_logprobs"][0, 1].tolist() == [-0.25, -2.0]
    assert torch.isinf(batch["ref_topk_logprobs"][1]).all() and torch.isinf(batch["ref_topk_logprobs"][0, 0]).all()
    assert batch["kl_mask"].tolist() == [[False, False, True], [False, False, False]]
    assert batch["anchor_confidence"].tolist() == [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]
    assert batch["labels"].tolist()[1] == [-100, -100, -100] and batch["input_ids"].tolist()[1] == [1, 9, 2]
    assert "loss_weights" not in batch
    cut = {**rows[0], "input_ids": [1, 7], "labels": [-100, 7]}
    with pytest.raises(ValueError, match="max_length=None"):
        AnchorKLCollator(pad_token_id=2)([cut])


@pytest.mark.slow
def test_untrained_model_is_at_its_own_reference(scored_topk, tmp_path, plain_model):
    """The KL targets are the model's own top-k: before any step, the KL-only loss is ~0."""
    import datasets

    mask_anchor(scored_topk, tmp_path / "train", "--anchors", "all")
    dataset = datasets.load_from_disk(str(tmp_path / "train"))
    rows = [dict(dataset[i]) for i in range(4)]
    for row in rows:
        row["labels"] = [-100] * len(row["labels"])  # KL positions only
    batch = AnchorKLCollator(pad_token_id=2)(rows)
    assert batch["kl_mask"].sum() > 20
    with torch.no_grad():
        logits = plain_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    at_reference = anchor_kl_loss(logits, batch["labels"], batch["ref_topk_ids"], batch["ref_topk_logprobs"],
                                  batch["kl_mask"], batch["anchor_confidence"])
    shuffled = anchor_kl_loss(logits, batch["labels"], batch["ref_topk_ids"], batch["ref_topk_logprobs"].flip(-1),
                              batch["kl_mask"], batch["anchor_confidence"])
    print(f"KL to its own top-{K} (float16-rounded): {at_reference.item():.2e} nats; reversed targets: {shuffled.item():.3f}")
    assert at_reference.item() < 1e-3 < 0.1 < shuffled.item()


@pytest.mark.slow
def test_trl_trains_one_step_with_the_exported_snippet(scored_topk, model_dir, tmp_path):
    folder = tmp_path / "train"
    mask_anchor(scored_topk, folder, "--confidence", 0.9)
    # The local copy of the model that scored: the default, its hub origin, needs the network.
    snippet = run_cli("export-config", folder, "--target", "trl", "--base-model", model_dir).stdout
    assert "with_anchor_kl(SFTTrainer)" in snippet and "AnchorKLCollator" in snippet
    # The snippet picks the device itself; only the run length changes for the test.
    quick = snippet.replace("num_train_epochs=1", "max_steps=1, report_to=[], save_strategy='no'")
    quick = quick.replace('output_dir="ftprep-sft"', f'output_dir="{tmp_path / "run"}"')
    assert quick != snippet
    namespace = {}
    exec(compile(quick, "snippet.py", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1 and len(trainer.train_dataset) == 40  # nothing truncated or dropped
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"]) and trainer.state.log_history[-1]["train_loss"] > 0


def test_with_anchor_kl_refuses_an_unknown_direction():
    from transformers import Trainer

    with pytest.raises(ValueError, match="reverse"):
        with_anchor_kl(Trainer, direction="sideways")
