"""The Python API as a notebook user calls it (issue 26, item 2): every command a function with
its options as keyword parameters, results that carry what the run reported, a warning when
rows are rejected, no stray progress bars, nothing left behind by a failed call, errors in
Python's spelling. The model stage is ZeroScores (no_model): these run in the fast tier."""

import dataclasses
import inspect
import json
import warnings
from pathlib import Path

import datasets
import pytest
from conftest import DATA, read_jsonl

import ftprep
from ftprep.api import FUNCTIONS, command_named
from ftprep.settings import spec_of

GOOD = {"prompt": "Say hi.", "completion": "Hi there."}
OTHER_FORMAT = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(autouse=True)
def temporary_folders_here(tmp_path, monkeypatch):
    """Calls without output= make their folders under tmp_path/tmp, where a test can count them."""
    import tempfile

    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))


@pytest.fixture
def scored(tmp_path, tiny_model_dir, no_model):
    return ftprep.score(read_jsonl(DATA / "sample.jsonl")[:6], model=tiny_model_dir, output=tmp_path / "scored")


def test_every_command_is_a_function_with_its_settings_as_keyword_parameters():
    assert set(FUNCTIONS) == {"score", "regen", "mask", "stats", "report", "inspect", "export", "export_config", "push",
                              "iv", "hft_plan"} == set(ftprep.FUNCTIONS)
    for name, command_name in FUNCTIONS.items():
        function = getattr(ftprep, name)
        parameters = inspect.signature(function).parameters
        settings = command_named(command_name).settings_of()
        for item in dataclasses.fields(settings):
            spec = spec_of(item)
            if spec.cli_only:  # how the command line prints (--json): the function returns the value
                assert item.name not in parameters, (name, item.name)
                continue
            parameter = parameters[item.name]
            assert parameter.kind is (inspect.Parameter.POSITIONAL_OR_KEYWORD if spec.argument
                                      else inspect.Parameter.KEYWORD_ONLY), (name, item.name)
            if item.default is not dataclasses.MISSING and not (item.name == "output" and name in ("score", "regen", "mask")):
                assert parameter.default == item.default, (name, item.name)
        assert {"quiet", "verbose"} <= set(parameters), name
        assert item.name in function.__doc__ or spec.cli_only  # help(ftprep.x) documents the parameters


def test_help_shows_the_options_with_defaults_and_python_spelling():
    text = ftprep.mask.__doc__
    assert "threshold (default 2.5)" in text and "strategy (default 'threshold')" in text
    for name in inspect.signature(ftprep.mask).parameters:  # its own options as keywords, not flags
        assert f"--{name.replace('_', '-')} " not in text, name
    signature = inspect.signature(ftprep.mask)
    assert signature.parameters["threshold"].default == 2.5 and signature.parameters["threshold"].annotation is float
    assert signature.return_annotation is ftprep.RunDataset


def test_rejected_rows_warn_with_count_and_reason_and_the_result_carries_them(tiny_model_dir, no_model):
    with pytest.warns(ftprep.RowsRejectedWarning) as caught:
        result = ftprep.score([GOOD, OTHER_FORMAT, GOOD], model=tiny_model_dir)
    message = str(caught[0].message)
    assert message.startswith("ftprep.score: 1 of 3 rows rejected (1 missing field 'prompt')"), message
    assert isinstance(result, datasets.Dataset) and result.num_rows == 2
    assert result.rejected == 1 and result.reject_reasons == {"missing field 'prompt'": 1}
    assert [(row["index"], row["reason"]) for row in result.rejects] == [(1, "missing field 'prompt'")]
    assert result.stats["rows_in"] == 3 and result.summary["rows_rejected"] == 1
    assert (result.output / "rejects.jsonl").is_file()


def test_a_run_without_rejects_does_not_warn(tiny_model_dir, no_model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ftprep.RowsRejectedWarning)
        result = ftprep.score([GOOD, GOOD], model=tiny_model_dir)
    assert result.rejected == 0 and result.reject_reasons == {}


def test_a_list_of_rows_prints_no_datasets_progress_bars(tiny_model_dir, no_model, capfd):
    datasets.enable_progress_bars()  # as in a fresh notebook (an earlier test may have turned them off)
    ftprep.score([GOOD, {"prompt": "Count to two.", "completion": "One, two."}], model=tiny_model_dir)
    err = capfd.readouterr().err
    assert "Saving the dataset" not in err and "Loading dataset" not in err, err
    assert datasets.are_progress_bars_disabled() is False  # the user's setting is restored


def test_a_failed_call_leaves_no_temporary_folder(tmp_path, tiny_model_dir, no_model):
    with pytest.raises(ftprep.FtprepError, match="reads none of the first"):
        ftprep.score([GOOD], model=tiny_model_dir, format="messages")
    with pytest.raises(ftprep.FtprepError, match=r"^top_k=-1 is out of range"):
        ftprep.score([GOOD], model=tiny_model_dir, top_k=-1)
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("call, message", [
    (lambda: ftprep.score([GOOD], top_k=-1), "top_k=-1 is out of range: give a value at least 0 and at most 1000"),
    (lambda: ftprep.mask("x", strategy="thresold"), "unknown strategy='thresold': use one of threshold, quantile"),
    (lambda: ftprep.mask("x", treshold=3.0), "ftprep.mask() has no option treshold (did you mean threshold?)"),
    (lambda: ftprep.mask("x", strategy="quantile", quantile=1.5), "quantile=1.5 is out of range"),
    (lambda: ftprep.score(12), "cannot read int"),
])
def test_errors_name_settings_the_python_way(call, message):
    with pytest.raises(ftprep.FtprepError) as error:
        call()
    assert str(error.value).startswith(message) and "\n" not in str(error.value) and "--" not in str(error.value)


def test_choice_aliases_are_accepted_in_python(tiny_model_dir, no_model):
    result = ftprep.score([GOOD], model=tiny_model_dir, format="prompt_completion")
    manifest = json.loads((result.output / "ftprep.json").read_text())
    assert manifest["config"]["format"] == "prompt-completion"


def test_the_other_commands_return_what_they_made(scored, tmp_path):
    train = ftprep.mask(scored, strategy="threshold", output=tmp_path / "train")
    assert isinstance(train, ftprep.RunDataset) and "labels" in train.column_names
    stats = ftprep.stats(train)
    assert stats["rows_out"] == 6 and "masked_share" in stats
    snippet = ftprep.export_config(train, target="axolotl", output=tmp_path / "axolotl.yaml")
    assert snippet.startswith("# Axolotl") and (tmp_path / "axolotl.yaml").read_text() == snippet
    assert ftprep.inspect(train, row=0).startswith("row 0 ")
    report = ftprep.report(scored, output=tmp_path / "report.html")
    assert report == tmp_path / "report.html" and "<html" in report.read_text()[:200].lower()
    parquet = ftprep.export(train, parquet=tmp_path / "parquet")
    assert datasets.load_dataset(str(parquet), split="train").num_rows == 6
    assert Path(train.output) == tmp_path / "train"


def test_quiet_calls_print_nothing(scored, tmp_path, capfd):
    capfd.readouterr()
    ftprep.mask(scored, output=tmp_path / "train", quiet=True)
    assert capfd.readouterr() == ("", "")


def test_hft_plan_returns_the_plan_it_wrote(tmp_path, tiny_model_dir):
    plan = ftprep.hft_plan(model=tiny_model_dir, output=tmp_path / "plan.json", quiet=True)
    assert plan == json.loads((tmp_path / "plan.json").read_text()) and plan["model"]


def test_result_info_answers_for_the_run_and_stays_datasets_info(tiny_model_dir, no_model):
    with pytest.warns(ftprep.RowsRejectedWarning):
        result = ftprep.score([GOOD, OTHER_FORMAT], model=tiny_model_dir)
    assert isinstance(result.info, datasets.DatasetInfo) and result.info.features is not None
    assert result.info["rejected"] == 1 and result.info["reject_reasons"] == {"missing field 'prompt'": 1}
    assert result.info["rows_in"] == 2 and result.info["rejects"][0]["index"] == 1 and "rejected" in result.info
    assert type(result.select([0]).info) is datasets.DatasetInfo  # a dataset made from it: datasets' own info
