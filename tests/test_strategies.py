"""A mask strategy is one class: a toy one registered from here runs through `ftprep.mask` and
shows its option in `ftprep mask --help`; a strategy's needs are refused in the caller's words."""

from dataclasses import dataclass

import numpy as np
import pytest
from conftest import REPO, flat, load_table, run_cli

import ftprep
from ftprep.manifest import open_run
from ftprep.stages.options import setting
from ftprep.stages.strategies import Strategy, register, unregister
from ftprep.stages.supervision import IGNORE_INDEX

SCORED = REPO / "tests" / "fixtures" / "schema0" / "scored"  # 2 rows scored without --top-k


@dataclass(frozen=True)
class EveryOptions:
    toy_every: int = setting(3, low=1, help="toy: mask every n-th candidate token.")


class EveryNth(Strategy):
    name = "toy"
    summary = "mask every --toy-every-th candidate token (a test of the registry)"
    Options = EveryOptions

    def masked(self, view, candidates, settings, context):
        index = np.flatnonzero(candidates)
        masked = np.zeros(len(view.input_ids), dtype=bool)
        masked[index[:: settings.options.toy_every]] = True
        return masked, None

    def describe(self, settings):
        return f"toy: label -100 on every {settings.options.toy_every}th candidate token"


@pytest.fixture
def toy():
    strategy = register(EveryNth())
    yield strategy
    unregister(strategy.name)


def test_a_strategy_registered_from_outside_runs_and_shows_its_option(toy, tmp_path):
    train = ftprep.mask(SCORED, strategy="toy", toy_every=2, output=tmp_path / "train")
    scored = load_table(SCORED)
    ids, assistant = flat(scored, "input_ids"), flat(scored, "assistant_mask").astype(bool)
    eot = np.isin(ids, [2]) & assistant  # end-of-turn tokens stay supervised (--keep-eos)
    candidates = np.flatnonzero(assistant & ~eot)
    expected = np.where(assistant, ids, IGNORE_INDEX)
    expected[candidates[::2]] = IGNORE_INDEX
    np.testing.assert_array_equal(flat(train.data.table, "labels"), expected)
    manifest = open_run(tmp_path / "train")
    assert manifest.config["strategy"] == "toy" and manifest.config["toy_every"] == 2

    help_text = " ".join(run_cli("mask", "--help").stdout.split())  # as one line: click wraps it
    assert "--toy-every INTEGER RANGE toy: mask every n-th candidate token. [default: 3; x>=1]" in help_text
    assert "toy: mask every --toy-every-th candidate token" in help_text  # its summary, under --strategy
    run_cli("mask", SCORED, "-o", tmp_path / "cli", "--strategy", "toy", "--toy-every", "2")
    np.testing.assert_array_equal(flat(load_table(tmp_path / "cli"), "labels"), expected)


def test_a_strategy_gone_from_the_registry_is_gone_from_the_command(tmp_path):
    assert "--toy-every" not in run_cli("mask", "--help").stdout
    with pytest.raises(ftprep.FtprepError, match="no option toy_every"):
        ftprep.mask(SCORED, toy_every=2, output=tmp_path / "train")


def test_anchor_without_top_k_names_top_k_as_each_caller_writes_it(tmp_path):
    with pytest.raises(ftprep.FtprepError) as error:
        ftprep.mask(SCORED, strategy="anchor", output=tmp_path / "api")
    assert error.value.field == "top_k"
    assert str(error.value) == (f"strategy='anchor' needs the reference model's top-k, which {SCORED} lacks: "
                                "rescore with ftprep.score(..., top_k=20)")

    result = run_cli("mask", SCORED, "-o", tmp_path / "cli", "--strategy", "anchor", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: --strategy anchor needs the reference model's top-k, which {SCORED} lacks: "
                                     "rescore with ftprep score --top-k 20")
    assert not (tmp_path / "api").exists() and not (tmp_path / "cli").exists()


def test_a_strategy_cannot_take_a_name_already_taken():
    with pytest.raises(ValueError, match="taken"):
        register(type("Again", (EveryNth,), {"name": "threshold"})())

    @dataclass(frozen=True)
    class Clash:
        sigma: float = setting(1.0, help="clashes with soft's")

    with pytest.raises(ValueError, match="option sigma is another's"):
        register(type("Clashing", (EveryNth,), {"name": "clash", "Options": Clash})())
