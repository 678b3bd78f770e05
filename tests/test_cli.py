"""`ftprep` end to end as a user runs it: score, mask, inspect, stats; errors; resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA, REPO, load_table, read_jsonl, run_cli


def data_files(folder):
    return sorted(Path(folder).glob("data-*.arrow"))


@pytest.mark.slow
def test_bad_rows_are_rejected_with_reasons_and_good_rows_go_through(tmp_path):
    out = tmp_path / "scored"
    result = run_cli("score", DATA / "bad_rows.jsonl", "-o", out)
    assert f"{out}: 5 rows written, 7 rejected (see {out / 'rejects.jsonl'})" in result.stdout
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [r["index"] for r in rejects] == [1, 3, 4, 6, 7, 9, 10]
    assert all(r["reason"] for r in rejects)
    assert {r["id"] for r in rejects} >= {"no-messages", "empty-assistant", "unknown-role", "non-string-content"}
    table = load_table(out)
    assert table.column("id").to_pylist() == ["good-1", "good-2", "good-3", "good-4", "good-5"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_in"] == 12 == stats["rows_out"] + stats["rows_rejected"]
    manifest = json.loads((out / "ftprep.json").read_text())
    assert manifest["counts"] == {"rows_in": 12, "rows_out": 5, "rows_rejected": 7}
    assert manifest["entropy_kind"] == "full" and manifest["tokenizer"]["end_of_turn_ids"] == [2]
    assert manifest["model"]["backend"] == "hf"  # --backend auto without a CUDA GPU


@pytest.mark.slow
def test_score_mask_inspect_end_to_end(tmp_path):
    import datasets

    scored, train = tmp_path / "scored", tmp_path / "train"
    run_cli("score", DATA / "formats" / "sharegpt.jsonl", "-o", scored, "--limit", "4")
    run_cli("mask", scored, "-o", train)
    dataset = datasets.load_from_disk(str(train))
    assert dataset.column_names == ["input_ids", "attention_mask", "labels"] and len(dataset) == 4
    assert datasets.load_from_disk(str(scored)).column_names[:4] == ["id", "messages", "input_ids", "assistant_mask"]
    shown = run_cli("inspect", train, "--row", "1", "--no-color").stdout
    assert shown.startswith("row 1 · id sample-002 · ")
    assert "<|im_start|>assistant" in shown and "[" in shown
    colored = run_cli("inspect", scored, "--row", "0", "--color").stdout
    assert "\x1b[1;31m" in colored
    assert "masked_share" in run_cli("stats", train).stdout
    assert json.loads(run_cli("stats", train, "--json").stdout) == json.loads((train / "stats.json").read_text())
    again = run_cli("mask", scored, "-o", train)
    assert "already complete" in again.stdout


@pytest.mark.slow
def test_each_source_kind_scores(tmp_path):
    for name in ("messages.json", "alpaca.csv", "prompt_completion_messages.jsonl"):
        out = tmp_path / name
        run_cli("score", DATA / "formats" / name, "-o", out, "--limit", "2")
        assert load_table(out).num_rows == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["score", "data/nope.jsonl", "-o", "{tmp}/x"], "error: input not found: data/nope.jsonl"),
        (["score", "data/sample.jsonl", "-o", "{tmp}/x", "--model", "/no/such/model"], "error: model not found"),
        (["score", "data/sample.jsonl", "-o", "{tmp}/x", "--model", "{tmp}/m.gguf"], "error: model file not found"),
        (["score", "data/sample.jsonl", "-o", "{tmp}/x", "--format", "yaml"], "error: Invalid value for '--format'"),
        (["score", "{tmp}/text.jsonl", "-o", "{tmp}/x"], "error: cannot tell the data format"),
        (["mask", "data", "-o", "{tmp}/x"], "error: data is not a scored dataset"),
        (["inspect", "{tmp}"], "error: "),
        (["score", "{tmp}/empty.jsonl", "-o", "{tmp}/x"], "error: {tmp}/empty.jsonl has no rows"),
    ],
)
def test_run_level_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "text.jsonl").write_text('{"text": "hello"}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args], check=False)
    assert result.returncode != 0
    assert result.stderr.strip().startswith(message.format(tmp=tmp_path)), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "x" / "ftprep.json").exists()


@pytest.mark.slow
def test_output_made_with_other_settings_is_not_overwritten(tmp_path):
    out = tmp_path / "scored"
    run_cli("score", DATA / "sample.jsonl", "-o", out, "--limit", "2")
    before = [p.read_bytes() for p in data_files(out)]
    result = run_cli("score", DATA / "sample.jsonl", "-o", out, "--limit", "3", check=False)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert "made with other settings or input (--limit 2 then, --limit 3 now)" in result.stderr  # both values
    assert [p.read_bytes() for p in data_files(out)] == before
    run_cli("score", DATA / "sample.jsonl", "-o", out, "--limit", "3", "--overwrite")
    assert load_table(out).num_rows == 3


@pytest.mark.slow
def test_a_rerun_after_the_input_was_edited_names_what_changed(tmp_path):
    data = tmp_path / "rows.jsonl"
    lines = (DATA / "sample.jsonl").read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:2]))
    out = tmp_path / "scored"
    run_cli("score", data, "-o", out)
    before = data.stat().st_size
    data.write_text("".join(lines[:3]))
    result = run_cli("score", data, "-o", out, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {out} holds an ftprep output made with other settings or input (the input's size: "
                           f"{before:,} bytes then, {data.stat().st_size:,} bytes now; the input's modification time: ")
    assert line.endswith(": pass --overwrite or choose another -o")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path):
    args = ["score", DATA / "sample.jsonl", "--limit", "20", "--shard-rows", "5"]
    killed = tmp_path / "killed"
    script = Path(sys.executable).parent / "ftprep"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ftprep.cli"]
    process = subprocess.Popen([*command, *map(str, args), "-o", str(killed)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = killed / ".ftprep-partial" / "shard-00001.json"
    deadline = time.monotonic() + 300
    while not committed.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert committed.exists() and not (killed / "ftprep.json").exists(), "the run should die after two shards"
    finished = {p.name: p.stat().st_mtime_ns for p in (killed / ".ftprep-partial").glob("shard-*.arrow")}
    assert len(finished) >= 2

    done = len(list((killed / ".ftprep-partial").glob("shard-*.json")))
    resumed = run_cli(*args, "-o", killed)
    assert f"{killed}: resuming an unfinished run, {done} shards already done" in resumed.stdout
    uninterrupted = tmp_path / "uninterrupted"
    run_cli(*args, "-o", uninterrupted)
    # Finished shards were kept, not recomputed: the files moved into place untouched.
    resumed_files = data_files(killed)
    for index, mtime in enumerate(sorted(finished.values())[:2]):
        assert resumed_files[index].stat().st_mtime_ns == mtime
    assert [p.read_bytes() for p in resumed_files] == [p.read_bytes() for p in data_files(uninterrupted)]
    assert (killed / "state.json").read_text() == (uninterrupted / "state.json").read_text()
    assert not (killed / ".ftprep-partial").exists()


@pytest.mark.slow
def test_two_runs_give_identical_output(tmp_path):
    for name in ("a", "b"):
        run_cli("score", DATA / "sample.jsonl", "-o", tmp_path / name, "--limit", "6", "--top-k", "3")
        run_cli("mask", tmp_path / name, "-o", tmp_path / f"{name}-train", "--strategy", "soft")
    for folder in ("{}", "{}-train"):
        a, b = (data_files(tmp_path / folder.format(n)) for n in "ab")
        assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


@pytest.mark.slow
def test_training_folder_trains_one_step_in_trl(scored_sample, tmp_path, model_dir):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train = tmp_path / "train"
    run_cli("mask", scored_sample, "-o", train)
    dataset = datasets.load_from_disk(str(train))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    args = SFTConfig(output_dir=str(tmp_path / "trl"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     use_cpu=True, save_strategy="no", logging_steps=1, learning_rate=1e-4)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model_dir))
    batch = next(iter(trainer.get_train_dataloader()))
    # TRL trains on our labels as they are: each batch row is one of our rows, padded with -100.
    ours = [row for row in dataset["labels"]]
    for labels in batch["labels"].tolist():
        trimmed = labels[: len(labels) - next((i for i, v in enumerate(reversed(labels)) if v != -100), 0)]
        assert any(row[: len(trimmed)] == trimmed and all(v == -100 for v in row[len(trimmed):]) for row in ours)
    result = trainer.train()
    assert np.isfinite(result.training_loss)
    assert not torch.equal(before, model.model.layers[0].mlp.down_proj.weight)


@pytest.mark.slow
def test_model_given_as_gguf_file_or_folder(tmp_path, model_dir):
    from ftprep.models import embedded_gguf_path, resolve_model

    gguf = embedded_gguf_path("smollm2-135m")
    assert resolve_model(str(gguf)) == model_dir  # converted once, then found in the cache
    for model in (gguf, model_dir):
        out = tmp_path / Path(model).name
        run_cli("score", DATA / "sample.jsonl", "-o", out, "--limit", "1", "--model", model)
        assert json.loads((out / "ftprep.json").read_text())["model"]["path"] == model_dir


def test_hub_ids_fail_fast_and_clearly_without_network(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, message in (
        (["score", "someone/no-such-dataset", "-o", tmp_path / "x"], "error: cannot load the hub dataset someone/no-such-dataset"),
        (["score", DATA / "sample.jsonl", "-o", tmp_path / "x", "--model", "someone/no-such-model"], "error: cannot load the model someone/no-such-model"),
    ):
        result = run_cli(*args, check=False, env=env, timeout=120)
        assert result.returncode == 1 and result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_the_same_input_by_another_path_is_the_same_run(tmp_path):
    run_cli("score", "data/sample.jsonl", "-o", tmp_path / "scored", "--limit", 3)
    again = run_cli("score", REPO / "data" / ".." / "data" / "sample.jsonl", "-o", tmp_path / "scored", "--limit", 3)
    assert "already complete" in again.stdout
    run_cli("mask", tmp_path / "scored", "-o", tmp_path / "train")
    again = run_cli("mask", tmp_path / "scored" / ".", "-o", tmp_path / "train")
    assert "already complete" in again.stdout


def test_bare_ftprep_shows_the_commands_in_workflow_order_and_exits_2():
    result = run_cli(check=False)
    assert result.returncode == 2
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == ["score", "regen", "mask", "inspect", "stats", "report", "export-config", "export", "push", "hft-plan", "iv"]


def test_help_offers_only_options_that_do_something():
    # mask loads no model: Ray runs it as tasks, so worker options would be silently ignored.
    mask_help, score_help = run_cli("mask", "--help").stdout, run_cli("score", "--help").stdout
    assert "--engine" in mask_help and "--num-workers" not in mask_help and "--gpus-per-worker" not in mask_help
    assert "--num-workers" in score_help and "--gpus-per-worker" in score_help
    assert run_cli("mask", DATA, "-o", "x", "--num-workers", 2, check=False).returncode == 2


class FakeTerminal:
    def isatty(self):
        return True


def test_inspect_colour_follows_the_terminal_and_no_color():
    from ftprep.commands.inspect_row import default_color

    assert default_color(FakeTerminal(), {}) and default_color(FakeTerminal(), {"NO_COLOR": ""})
    assert not default_color(FakeTerminal(), {"NO_COLOR": "1"})
    assert not default_color(sys.stdout if not sys.stdout.isatty() else open(os.devnull), {})


def test_cache_dir_follows_ftprep_hf_and_xdg_variables():
    from ftprep.models import cache_dir_for

    assert cache_dir_for({}) == "~/.cache/ftprep"
    assert cache_dir_for({"XDG_CACHE_HOME": "/x"}) == "/x/ftprep"
    assert cache_dir_for({"XDG_CACHE_HOME": "/x", "HF_HOME": "/h"}) == "/h/ftprep"
    assert cache_dir_for({"XDG_CACHE_HOME": "/x", "HF_HOME": "/h", "FTPREP_CACHE": "/f"}) == "/f"
    assert cache_dir_for({"HF_HOME": ""}) == "~/.cache/ftprep"  # set but empty: unset
