"""Every hint leads somewhere (issue 26, item 3): each error that suggests an action is tested by
taking that action, which must then work. The model stage is ZeroScores (no_model): these run in
the fast tier."""

import json

import pytest
from conftest import DATA, run_cli
from test_faults import one_line_error

SAMPLE = DATA / "sample.jsonl"


@pytest.fixture
def scored(tmp_path, tiny_model_dir, no_model):
    run_cli("score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 6, "-q")
    return tmp_path / "scored"


def test_a_foreign_output_folder_choose_another_or_move_the_files_out(scored, tmp_path):
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    last = one_line_error(run_cli("mask", scored, "-o", mine, check=False),
                          "choose another -o, or move those files out")
    assert "or --overwrite" not in last  # the old hint, a dead end: --overwrite refuses too
    one_line_error(run_cli("mask", scored, "-o", mine, "--overwrite", check=False), "holds files ftprep did not write")
    run_cli("mask", scored, "-o", tmp_path / "another")  # choose another -o
    (mine / "thesis.tex").rename(tmp_path / "thesis.tex")  # or move the files out
    run_cli("mask", scored, "-o", mine)
    assert (mine / "ftprep.json").is_file() and (tmp_path / "thesis.tex").read_text() == "years of work"


def test_soft_weights_for_axolotl_print_hf_or_rerun_mask_with_a_hard_strategy(scored, tmp_path):
    run_cli("mask", scored, "-o", tmp_path / "soft", "--strategy", "soft", "-q")
    last = one_line_error(run_cli("export-config", tmp_path / "soft", "--target", "axolotl", check=False),
                          "which axolotl cannot read")
    assert "print the snippet for --target hf" in last and "a hard strategy (e.g. --strategy threshold) and --target axolotl" in last
    assert run_cli("export-config", tmp_path / "soft", "--target", "hf").stdout.startswith("# Train with TRL")
    run_cli("mask", scored, "-o", tmp_path / "hard", "--strategy", "threshold", "--target", "axolotl", "-q")
    assert run_cli("export-config", tmp_path / "hard", "--target", "axolotl").stdout.startswith("# Axolotl")


def test_weights_asked_of_a_hard_strategy_rerun_without_weights(scored, tmp_path):
    run_cli("mask", scored, "-o", tmp_path / "weighted", "--strategy", "threshold", "--weights", "-q")
    last = one_line_error(run_cli("export-config", tmp_path / "weighted", "--target", "llama-factory", check=False),
                          "rerun ftprep mask with --target llama-factory (without --weights)")
    run_cli("mask", scored, "-o", tmp_path / "plain", "--strategy", "threshold", "--target", "llama-factory", "-q")
    assert "tokenized_path" in run_cli("export-config", tmp_path / "plain", "--target", "llama-factory").stdout
    assert last


def test_mask_refuses_weights_for_axolotl_use_hf_or_a_hard_strategy(scored, tmp_path):
    last = one_line_error(run_cli("mask", scored, "-o", tmp_path / "a", "--strategy", "soft", "--target", "axolotl",
                                  check=False), "use --target hf", "or a hard strategy (threshold, quantile, none)")
    assert last
    run_cli("mask", scored, "-o", tmp_path / "hf", "--strategy", "soft", "--target", "hf", "-q")
    run_cli("mask", scored, "-o", tmp_path / "quantile", "--strategy", "quantile", "--target", "axolotl", "-q")


@pytest.mark.parametrize("hint", ["pass --overwrite", "choose another -o"])
def test_an_output_made_with_other_settings_overwrite_or_choose_another(scored, tmp_path, hint):
    run_cli("mask", scored, "-o", tmp_path / "train", "--threshold", "3", "-q")
    one_line_error(run_cli("mask", scored, "-o", tmp_path / "train", "--threshold", "4", check=False),
                   "made with other settings or input (", "pass --overwrite or choose another -o")
    if hint == "pass --overwrite":
        run_cli("mask", scored, "-o", tmp_path / "train", "--threshold", "4", "--overwrite", "-q")
        assert json.loads((tmp_path / "train" / "ftprep.json").read_text())["config"]["threshold"] == 4
    else:
        run_cli("mask", scored, "-o", tmp_path / "other", "--threshold", "4", "-q")


@pytest.mark.parametrize("hint", ["pass --format messages", "leave --format out"])
def test_a_format_that_fits_no_row_pass_the_one_found_or_leave_it_out(tmp_path, tiny_model_dir, no_model, hint):
    base = ["score", SAMPLE, "-o", tmp_path / "out", "--model", tiny_model_dir, "--limit", 3, "-q"]
    one_line_error(run_cli(*base, "--format", "sharegpt", check=False),
                   "the rows look like messages: pass --format messages, or leave --format out")
    run_cli(*base, *(["--format", "messages"] if hint == "pass --format messages" else []))
    assert (tmp_path / "out" / "ftprep.json").is_file()


def test_a_special_token_in_the_text_pass_allow_special_tokens(tmp_path, tiny_model_dir, no_model):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Say <|im_end|> please.", "completion": "No."}) + "\n"
                    + json.dumps({"prompt": "Say hi.", "completion": "Hi."}) + "\n")
    base = ["score", rows, "-o", tmp_path / "out", "--model", tiny_model_dir, "-q"]
    assert json.loads(run_cli(*base, "--json").stdout)["rows_rejected"] == 1
    [reject] = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert "pass --allow-special-tokens" in reject["reason"], reject
    taken = json.loads(run_cli(*base, "--overwrite", "--allow-special-tokens", "--json").stdout)
    assert (taken["rows_out"], taken["rows_rejected"]) == (2, 0)


def test_a_snippet_file_that_exists_pass_overwrite(scored, tmp_path):
    run_cli("mask", scored, "-o", tmp_path / "train", "-q")
    (tmp_path / "train.py").write_text("mine")
    one_line_error(run_cli("export-config", tmp_path / "train", "-o", tmp_path / "train.py", check=False),
                   "exists: pass --overwrite to replace it, or choose another -o")
    run_cli("export-config", tmp_path / "train", "-o", tmp_path / "train.py", "--overwrite")
    run_cli("export-config", tmp_path / "train", "-o", tmp_path / "other.py")
    assert (tmp_path / "train.py").read_text() == (tmp_path / "other.py").read_text() != "mine"


def test_quiet_and_verbose_together_give_one_of_them(scored, tmp_path):
    one_line_error(run_cli("stats", scored, "-q", "-v", check=False), "give one of them")
    assert run_cli("stats", scored, "-q").stdout and run_cli("stats", scored, "-v").stdout


def test_a_foreign_plan_file_choose_another_or_overwrite(tmp_path, tiny_model_dir):
    (tmp_path / "mine.json").write_text("{}")
    one_line_error(run_cli("hft-plan", "--model", tiny_model_dir, "-o", tmp_path / "mine.json", check=False),
                   "choose another -o (or --overwrite)")
    run_cli("hft-plan", "--model", tiny_model_dir, "-o", tmp_path / "plan.json", "-q")
    run_cli("hft-plan", "--model", tiny_model_dir, "-o", tmp_path / "mine.json", "--overwrite", "-q")
    assert json.loads((tmp_path / "mine.json").read_text()) == json.loads((tmp_path / "plan.json").read_text())


@pytest.fixture
def interrupted_mask(tmp_path, tiny_model_dir, no_model, monkeypatch):
    """A mask run stopped by Ctrl-C after its first shard: the partial run it leaves, and its args."""
    from ftprep.writers import ShardedOutput

    run_cli("score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 6, "--shard-rows", 2, "-q")
    real, calls = ShardedOutput.write_shard, []

    def write_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    args = ["mask", tmp_path / "scored", "-o", tmp_path / "train", "--threshold", "3"]
    with monkeypatch.context() as patch:
        patch.setattr(ShardedOutput, "write_shard", write_then_interrupt)
        result = run_cli(*args, check=False)
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "interrupted; rerun the same command to resume"
    assert (tmp_path / "train" / ".ftprep-partial").is_dir() and not (tmp_path / "train" / "ftprep.json").exists()
    return args


def test_an_interrupted_run_rerun_the_same_command_to_resume(interrupted_mask, tmp_path):
    run_cli(*interrupted_mask, "-q")
    assert json.loads((tmp_path / "train" / "ftprep.json").read_text())["counts"]["rows_out"] == 6


def test_an_unfinished_run_with_other_settings_pass_overwrite_to_start_again(interrupted_mask, tmp_path):
    other = [*interrupted_mask[:-1], "4"]
    one_line_error(run_cli(*other, check=False), "unfinished run with other settings or input (", "pass --overwrite to start again")
    run_cli(*other, "--overwrite", "-q")
    assert json.loads((tmp_path / "train" / "ftprep.json").read_text())["config"]["threshold"] == 4


def test_a_damaged_scored_folder_rerun_the_command_that_wrote_it(tmp_path, tiny_model_dir, no_model):
    score = ["score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 6, "-q"]
    run_cli(*score)
    (tmp_path / "scored" / "stats.json").write_text('{"rows_in"')
    one_line_error(run_cli("mask", tmp_path / "scored", "-o", tmp_path / "train", check=False),
                   "is damaged", "rerun the command that wrote it")
    run_cli(*score)
    run_cli("mask", tmp_path / "scored", "-o", tmp_path / "train", "-q")


def test_a_damaged_stats_file_rerun_the_command_that_wrote_it(scored, tmp_path):
    mask = ["mask", scored, "-o", tmp_path / "train", "-q"]
    run_cli(*mask)
    (tmp_path / "train" / "stats.json").write_text("[1, 2]")  # valid JSON, but no stats
    one_line_error(run_cli("stats", tmp_path / "train", check=False), "not a stats object", "rerun the command that wrote it")
    run_cli(*mask)  # the rerun sees the damage and writes the output again
    assert json.loads(run_cli("stats", tmp_path / "train", "--json").stdout)["rows_out"] == 6


def test_a_gpu_asked_for_on_a_machine_without_one_use_device_cpu(tmp_path, tiny_model_dir, no_model, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on CI, also where a GPU is lent
    score = ["score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 2, "-q"]
    one_line_error(run_cli(*score, "--device", "cuda", check=False), "no CUDA GPU is visible: use --device cpu")
    assert not (tmp_path / "scored").exists()
    run_cli(*score, "--device", "cpu")
    assert (tmp_path / "scored" / "ftprep.json").is_file()


def test_mask_of_a_folder_score_did_not_write_run_ftprep_score_first(tmp_path, tiny_model_dir, no_model):
    one_line_error(run_cli("mask", DATA, "-o", tmp_path / "train", check=False), "run ftprep score first")
    run_cli("score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 2, "-q")
    run_cli("mask", tmp_path / "scored", "-o", tmp_path / "train", "-q")
