"""Item 4 of issue 26, as a user meets it, on the scored folder of tests/fixtures (no model loads):
report refuses to replace a file, options of another strategy are refused, messages only where
there is something to see, a resume says so, another input is named."""

import json
import shutil

import pytest
from conftest import REPO, run_cli

import ftprep
from ftprep.stages.errors import FtprepError

SCORED = REPO / "tests" / "fixtures" / "schema0" / "scored"


def last_error(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_report_refuses_to_replace_a_file_unless_overwrite(tmp_path):
    # A scored folder: the fixture's mask output names its scored folder by the absolute path it was made at.
    page = tmp_path / "report.html"
    page.write_text("my notes")
    assert last_error(run_cli("report", SCORED, "-o", page, check=False)) == (
        f"error: {page} exists: pass --overwrite to replace it, or choose another -o")
    assert page.read_text() == "my notes"
    assert run_cli("report", SCORED, "-o", page, "--overwrite").stdout.strip() == f"wrote {page}"
    assert "<svg" in page.read_text()
    # Its --help says what --overwrite does here: a report does not resume.
    help_text = " ".join(run_cli("report", "--help").stdout.split())
    assert "--overwrite Replace an existing output at -o" in help_text and "resuming" not in help_text
    assert "instead of resuming it" in " ".join(run_cli("mask", "--help").stdout.split())


def test_options_of_another_strategy_are_refused_with_those_it_reads(tmp_path):
    out = tmp_path / "train"
    line = last_error(run_cli("mask", SCORED, "-o", out, "--strategy", "quantile", "--sigma", "2", check=False))
    assert line == ("error: --sigma is read only by --strategy soft, not quantile, which reads --quantile, --scope "
                    "and the options every strategy shares: drop it or use --strategy soft")
    line = last_error(run_cli("mask", SCORED, "-o", out, "--sigma", "2", "--delta", "1", check=False))
    assert line.startswith("error: --sigma, --delta are options of other strategies (soft, delta), not of threshold, "
                           "which reads --threshold")
    with pytest.raises(FtprepError, match=r"^sigma= is read only by strategy='soft', not quantile, which reads "
                                          r"quantile=, scope="):
        ftprep.mask(str(SCORED), output=str(out), strategy="quantile", sigma=2)
    assert not out.exists()
    config = tmp_path / "mask.yaml"  # a --config file's keys count as given
    config.write_text("strategy: quantile\nsigma: 2\n")
    assert last_error(run_cli("mask", SCORED, "-o", out, "--config", config, check=False)).startswith(
        "error: --sigma is read only by --strategy soft, not quantile")
    # An option of the chosen strategy, or one left at its default, is no mistake.
    run_cli("mask", SCORED, "-o", out, "--strategy", "soft", "--sigma", "2")


def test_a_clean_hard_mask_says_no_more_than_there_is(tmp_path):
    out = tmp_path / "train"
    result = run_cli("mask", SCORED, "-o", out)
    assert f"{out}: 2 rows written, 0 rejected\n" in result.stdout  # no "(see rejects.jsonl)" for 0 rejects
    assert "resuming" not in result.stdout
    stats = json.loads((out / "stats.json").read_text())
    assert "masked_share" in stats
    assert not {"mean_weight", "weight_sum", "weight_quantiles"} & set(stats)  # hard labels: no weights to report
    soft = json.loads((run_cli("mask", SCORED, "-o", tmp_path / "soft", "--strategy", "soft") and
                       (tmp_path / "soft" / "stats.json")).read_text())
    assert 0 < soft["mean_weight"] <= 1 and "weight_quantiles" in soft


def test_a_resumed_run_says_how_many_shards_were_done(tmp_path, monkeypatch):
    from ftprep.writers import ShardedOutput

    out = tmp_path / "train"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # as if killed after its shard was committed
        patch.setattr(ShardedOutput, "finalize", killed)
        assert run_cli("mask", SCORED, "-o", out, check=False).returncode == 130
    assert (out / ".ftprep-partial" / "shard-00000.json").exists()
    result = run_cli("mask", SCORED, "-o", out)
    assert f"{out}: resuming an unfinished run, 1 shard already done" in result.stdout
    assert (out / "ftprep.json").exists()


def test_another_scored_folder_is_named_with_both_paths(tmp_path):
    copy = tmp_path / "scored-copy"
    shutil.copytree(SCORED, copy)
    out = tmp_path / "train"
    run_cli("mask", SCORED, "-o", out)
    line = last_error(run_cli("mask", copy, "-o", out, check=False))
    assert line.startswith(f"error: {out} holds an ftprep output made with other settings or input (scored: {SCORED} then, "
                           f"{copy} now")
    assert line.endswith(": pass --overwrite or choose another -o")
    line = last_error(run_cli("mask", SCORED, "-o", out, "--threshold", "3", check=False))
    assert "(--threshold 2.5 then, --threshold 3.0 now)" in line
