"""The conventions a TRL or Axolotl user looks for (issue 26, item 6), run as a user would:
--config FILE, -q/-v, --json summaries, export-config -o, what each command writes in its --help,
shell completion, choices in one naming style with the old spellings accepted. The model stage is
ZeroScores (no_model): these run in the fast tier."""

import json
import os

import pytest
from conftest import DATA, run_cli, run_cli_process
from test_faults import one_line_error

from ftprep.commands import COMMANDS

SAMPLE = DATA / "sample.jsonl"


@pytest.fixture
def scored(tmp_path, tiny_model_dir, no_model):
    run_cli("score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 6, "-q")
    return tmp_path / "scored"


def manifest_config(folder):
    return json.loads((folder / "ftprep.json").read_text())["config"]


@pytest.mark.parametrize("name, text", [
    ("mask.yaml", "strategy: soft\nsigma: 0.5\nmin_kept: 2   # - or _ both name the option\n"),
    ("mask.json", json.dumps({"strategy": "soft", "sigma": 0.5, "min-kept": 2})),
])
def test_config_file_options_apply_and_the_command_line_overrides_them(scored, tmp_path, name, text):
    (tmp_path / name).write_text(text)
    run_cli("mask", scored, "-o", tmp_path / "a", "--config", tmp_path / name)
    config = manifest_config(tmp_path / "a")
    assert (config["strategy"], config["sigma"], config["min_kept"]) == ("soft", 0.5, 2)
    run_cli("mask", scored, "-o", tmp_path / "b", "--config", tmp_path / name, "--sigma", "0.9")
    assert manifest_config(tmp_path / "b")["sigma"] == 0.9


def test_config_values_are_checked_like_typed_ones(scored, tmp_path):
    (tmp_path / "bad.yaml").write_text("strategy: thresold\n")
    result = run_cli("mask", scored, "-o", tmp_path / "a", "--config", tmp_path / "bad.yaml", check=False)
    assert result.returncode == 2 and "thresold" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("text, needles", [
    ("treshold: 3\n", ["ftprep mask has no option treshold (did you mean threshold?)", "its options: ", "threshold"]),
    ("strategy: [soft\n", ["is not valid YAML (line 2, column 1)"]),
    ("- strategy\n", ["holds a list, not a mapping of option names to values"]),
])
def test_a_bad_config_file_is_one_line_that_says_what_is_wrong(tmp_path, text, needles):
    (tmp_path / "c.yaml").write_text(text)
    result = run_cli("mask", tmp_path, "-o", tmp_path / "a", "--config", tmp_path / "c.yaml", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and all(needle in error[0] for needle in needles), result.stderr


def test_a_missing_config_file_is_named(tmp_path):
    result = run_cli("stats", tmp_path, "--config", tmp_path / "none.yaml", check=False)
    assert result.returncode == 2 and "none.yaml does not exist" in result.stderr


def test_quiet_prints_nothing_but_the_result(scored, tmp_path):
    result = run_cli("mask", scored, "-o", tmp_path / "train", "-q")
    assert (result.stdout, result.stderr) == ("", "")
    assert run_cli("stats", tmp_path / "train", "-q").stdout.strip()  # what the command is for stays
    one_line_error(run_cli("mask", scored, "-o", tmp_path / "t2", "-q", "-v", check=False), "opposite things")


def test_verbose_says_what_was_resolved_and_each_shard(tmp_path, tiny_model_dir, no_model):
    result = run_cli("score", SAMPLE, "-o", tmp_path / "scored", "--model", tiny_model_dir, "--limit", 6,
                     "--shard-rows", 4, "-v")
    assert f"read as messages; model {tiny_model_dir}" in result.stderr and "backend hf" in result.stderr
    assert "shard 0 committed, 4 rows" in result.stderr and "shard 1 committed, 2 rows" in result.stderr
    quiet = run_cli("score", SAMPLE, "-o", tmp_path / "s2", "--model", tiny_model_dir, "--limit", 6)
    assert "committed" not in quiet.stderr and "read as" not in quiet.stderr


def test_json_summaries_on_score_and_mask_are_the_only_stdout(scored, tmp_path, tiny_model_dir):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(SAMPLE.read_text().splitlines()[0] + "\n" + json.dumps({"messages": []}) + "\n")
    result = run_cli("score", rows, "-o", tmp_path / "s", "--model", tiny_model_dir, "--json", check=False)
    summary = json.loads(result.stdout)
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (2, 1, 1)
    assert summary["output"] == str(tmp_path / "s") and sum(summary["reject_reasons"].values()) == 1
    assert summary["stats"]["tokens"] > 0
    masked = json.loads(run_cli("mask", scored, "-o", tmp_path / "train", "--json").stdout)
    assert masked["rows_out"] == 6 and 0 <= masked["stats"]["masked_share"] <= 1


def test_export_config_writes_a_file_with_o_and_refuses_to_replace_one(scored, tmp_path):
    run_cli("mask", scored, "-o", tmp_path / "train", "-q")
    printed = run_cli("export-config", tmp_path / "train", "--target", "axolotl").stdout
    result = run_cli("export-config", tmp_path / "train", "--target", "axolotl", "-o", tmp_path / "axolotl.yaml")
    assert (tmp_path / "axolotl.yaml").read_text() == printed and result.stdout == f"wrote {tmp_path / 'axolotl.yaml'}\n"
    last = one_line_error(run_cli("export-config", tmp_path / "train", "-o", tmp_path / "axolotl.yaml", check=False),
                          "exists: pass --overwrite")
    assert "axolotl.yaml" in last
    run_cli("export-config", tmp_path / "train", "--target", "trl", "-o", tmp_path / "axolotl.yaml", "--overwrite")
    assert (tmp_path / "axolotl.yaml").read_text() != printed  # the hint led somewhere
    one_line_error(run_cli("export-config", tmp_path / "train", "-o", tmp_path, check=False), "is a folder")


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_each_commands_help_ends_with_what_it_writes(name):
    text = run_cli(name, "--help").stdout
    epilog = text.strip().split("\n\n")[-1]
    assert epilog.lstrip().startswith("Writes "), text
    assert "--config FILE" in text and "-q, --quiet" in text and "-v, --verbose" in text
    assert ("--json" in text) == (name in ("score", "regen", "mask", "stats"))


def test_shell_completion_works_as_the_readme_says():
    readme = (DATA.parent / "docs" / "reference" / "api.md").read_text()  # where the docs say it
    assert 'eval "$(_FTPREP_COMPLETE=bash_source ftprep)"' in readme
    script = run_cli_process(env={**os.environ, "_FTPREP_COMPLETE": "bash_source"}).stdout
    assert "_ftprep_completion" in script and "complete " in script
    words = run_cli_process(env={**os.environ, "_FTPREP_COMPLETE": "bash_complete", "COMP_WORDS": "ftprep mask --target ",
                                 "COMP_CWORD": "3"}).stdout
    assert "llama-factory" in words and "llama_factory" not in words


def test_choices_are_hyphenated_and_the_old_underscore_spellings_still_work(tmp_path, tiny_model_dir, no_model):
    text = run_cli("score", "--help").stdout
    assert "prompt-completion" in text and "prompt_completion" not in text
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,completion\nSay hi.,Hi there.\n")
    run_cli("score", csv, "-o", tmp_path / "s", "--model", tiny_model_dir, "--format", "prompt_completion", "-q")
    assert manifest_config(tmp_path / "s")["format"] == "prompt-completion"
    run_cli("mask", tmp_path / "s", "-o", tmp_path / "t", "--target", "llama_factory", "-q")
    assert manifest_config(tmp_path / "t")["target"] == "llama-factory"


def test_verbose_shows_what_caused_an_error_above_its_one_line(tmp_path, tiny_model_dir):
    (tmp_path / "cut.json").write_text('{"messages": [\n')
    result = run_cli("score", tmp_path / "cut.json", "-o", tmp_path / "out", "--model", tiny_model_dir, "-v", check=False)
    last = one_line_error(result, "is not valid JSON")
    assert "caused by: JSONDecodeError: " in result.stderr and last == result.stderr.strip().splitlines()[-1]
    plain = run_cli("score", tmp_path / "cut.json", "-o", tmp_path / "out", "--model", tiny_model_dir, check=False)
    assert "caused by" not in plain.stderr
