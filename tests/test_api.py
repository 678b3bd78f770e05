"""ftprep as a library: the commands as functions, and settings declared once."""

import dataclasses
import json

import datasets
import pytest
from conftest import DATA, assert_tables_equal, load_table, read_jsonl, run_cli

import ftprep
from ftprep.commands.mask import MaskSettings
from ftprep.commands.regen import RegenSettings
from ftprep.commands.score import ScoreSettings
from ftprep.manifest import RunManifest
from ftprep.stages.mask_settings import MaskStageSettings, describe
from ftprep.stages.strategies import REGISTRY


@pytest.mark.slow
def test_score_and_mask_from_python_equal_the_commands(tmp_path, tiny_model_dir):
    rows = read_jsonl(DATA / "sample.jsonl")[:5]
    scored = ftprep.score(rows, model=tiny_model_dir, top_k=3)
    assert isinstance(scored, datasets.Dataset) and scored.num_rows == 5
    train = ftprep.mask(scored, strategy="soft", output=tmp_path / "train")
    assert train.column_names == ["input_ids", "attention_mask", "labels", "loss_weights"]

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run_cli("score", tmp_path / "rows.jsonl", "-o", tmp_path / "cli-scored", "--model", tiny_model_dir, "--top-k", 3)
    run_cli("mask", tmp_path / "cli-scored", "-o", tmp_path / "cli-train", "--strategy", "soft")
    assert_tables_equal(scored.data.table, load_table(tmp_path / "cli-scored"))
    assert_tables_equal(train.data.table, load_table(tmp_path / "cli-train"))


@pytest.mark.slow
def test_a_python_run_with_an_output_folder_resumes_there(tmp_path, tiny_model_dir):
    first = ftprep.score(DATA / "sample.jsonl", model=tiny_model_dir, limit=4, output=tmp_path / "scored")
    manifest = (tmp_path / "scored" / "ftprep.json").read_text()
    again = ftprep.score(str(DATA / "sample.jsonl"), model=tiny_model_dir, limit=4, output=str(tmp_path / "scored"))
    assert (tmp_path / "scored" / "ftprep.json").read_text() == manifest  # complete: nothing redone
    assert_tables_equal(again.data.table, first.data.table)
    with pytest.raises(ftprep.FtprepError, match="other settings"):
        ftprep.score(DATA / "sample.jsonl", model=tiny_model_dir, limit=5, output=tmp_path / "scored")


@pytest.mark.parametrize("call, message", [
    (lambda scored: ftprep.mask(scored, strategy="thresold"),
     "unknown --strategy 'thresold': use one of threshold, quantile, soft, delta, anchor, none"),
    (lambda scored: ftprep.mask(scored, strategy="soft", weight_fn="probability"), "unknown --weight-fn 'probability'"),
    (lambda scored: ftprep.mask(scored, treshold=3.0), "ftprep.mask() has no option treshold: use "),
    (lambda scored: ftprep.mask(scored, quantile=1.5, strategy="quantile"), "--quantile 1.5 is out of range"),
    (lambda scored: ftprep.score(DATA / "sample.jsonl", top_k=-1), "--top-k -1 is out of range"),
    (lambda scored: ftprep.score(12), "cannot read int"),
])
@pytest.mark.slow
def test_python_calls_fail_with_the_commands_one_line_errors(scored_sample, call, message):
    with pytest.raises(ftprep.FtprepError) as error:
        call(scored_sample)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("settings_class, command", [(ScoreSettings, "score"), (MaskSettings, "mask"), (RegenSettings, "regen")])
def test_every_setting_is_an_option_of_its_command_with_its_default(settings_class, command):
    from ftprep.cli import cli

    params = {param.name: param for param in cli.commands[command].params}
    for item in dataclasses.fields(settings_class):
        assert item.name in params, f"{command} --{item.name}"
        if item.default is not dataclasses.MISSING:
            assert params[item.name].default == item.default
        assert params[item.name].__class__.__name__ == ("Argument" if item.name in ("input", "scored") else "Option")


def test_each_strategy_describes_itself_in_the_card_report_and_snippets():
    from ftprep.publish.card import strategy_text

    defaults = {item.name: item.default for item in dataclasses.fields(MaskSettings) if item.default is not dataclasses.MISSING}
    for name, strategy in REGISTRY.items():
        config = {**defaults, "strategy": name}
        text = describe(MaskStageSettings.from_config(config))
        assert text.startswith(name) and strategy.summary
        assert strategy_text(RunManifest.from_json({"stage": "mask", "config": config})) == text
    assert "second model" in describe(MaskStageSettings.from_config({**defaults, "strategy": "delta"}))
    assert "AnchorLwF" in describe(MaskStageSettings.from_config({**defaults, "strategy": "anchor"}))
    assert "plain SFT" not in describe(MaskStageSettings.from_config({**defaults, "strategy": "delta"}))
