import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import ftprep
from ftprep.models import load_model, load_tokenizer, resolve_model
from ftprep.writers import read_shards

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


# The modules that take longest start first, so that with `pytest -n 2 --dist loadfile
# --no-loadscope-reorder` (what `make test` runs) neither worker is left with one long module at
# the end (xdist's own order is by number of tests, which puts these last).
LONGEST_FIRST = ("test_ray", "test_regen", "test_vllm", "test_families", "test_cli", "test_faults", "test_mask")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.module.__name__ if item.module else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the tests of one module keep their order


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its share of the cores: torch's threads (and those of
    the commands the tests start) would otherwise fight over the same ones."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)
    if config.option.markexpr == FAST_TIER:
        refuse_model_loading()


# The fast tier (`make test-fast`): every test that loads no model. A test that does is marked
# `slow` (model runs end to end); in the fast tier loading one fails the test, so the mark is
# never forgotten.
FAST_TIER = "not slow"


def refuse_model_loading():
    from transformers import PreTrainedModel

    def refuse(*args, **kwargs):
        raise RuntimeError("a test of the fast tier (-m 'not slow') loads a model: mark it @pytest.mark.slow")

    # Weights, that is: a model built from its config alone on the meta device (hft-plan) is no load.
    PreTrainedModel.from_pretrained = classmethod(refuse)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, check=True, env=None, timeout=None) -> CliResult:
    """Run the `ftprep` command as a user would, from the repo root, in this process: the same
    entry point (ftprep.cli.main), output and exit code as the console script, without the cost
    of a new interpreter."""
    from click.testing import CliRunner

    from ftprep.cli import main

    previous = os.getcwd()
    os.chdir(REPO)
    try:
        with CliRunner().isolation(env=env) as streams:
            try:
                main([str(arg) for arg in args])
                code = 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            stdout, stderr = (stream.getvalue().decode() for stream in streams[:2])
    finally:
        os.chdir(previous)
    result = CliResult(code, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"ftprep {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def run_cli_process(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    """The console script in a process of its own: for what only a real process shows (signals,
    a fresh interpreter)."""
    script = Path(sys.executable).parent / "ftprep"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ftprep.cli"]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"ftprep {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def score_folder(input, output, **settings):
    """`ftprep score` through the Python API, quietly; in float32 unless told (`--dtype auto` is
    bfloat16 on some CPUs, and the tests compare with float32 references)."""
    settings.setdefault("dtype", "float32")
    ftprep.score(str(input), output=str(output), **settings)
    return Path(output)


def mask_folder(scored, output, **settings):
    ftprep.mask(str(scored), output=str(output), **settings)
    return Path(output)


def hf_scorer(model_dir, dtype="float32", **settings):
    from ftprep.stages.score.hf import HFScorer

    return HFScorer(load_model(model_dir, dtype, "cpu"), **settings)


def load_table(folder):
    import pyarrow as pa

    return pa.concat_tables(list(read_shards(Path(folder))))


def read_jsonl(path):
    # JSON Lines ends a record at "\n" only: str.splitlines() would also cut at U+2028 and the
    # like, which JSON writes raw inside strings (a fuzzed row id has one).
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def progress_lines(stderr: str, label: str = "score") -> list[tuple[int, int]]:
    """(rows, tokens) of each plain progress line of a `label` run, as
    `score: 48/200 rows, 8,500 tokens (19 tok/s), 7m36s, ETA 24m05s` (the ETA while unfinished)."""
    line = re.compile(rf"^{label}: (\d+)/(\d+) rows, ([\d,]+) tokens \([\d,]+ tok/s\), \S+(, ETA \S+)?$")
    found = [line.match(text) for text in stderr.splitlines()]
    return [(int(match[1]), int(match[3].replace(",", ""))) for match in found if match]


def flat(table, name):
    from ftprep.stages import flat_values

    return flat_values(table, name)


@pytest.fixture(scope="session")
def model_dir():
    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    return load_tokenizer(model_dir)


@pytest.fixture(scope="session")
def scored_sample(tmp_path_factory, model_dir):
    """data/sample.jsonl scored once for the whole session, in several shards."""
    output = tmp_path_factory.mktemp("scored") / "sample"
    return score_folder(DATA / "sample.jsonl", output, shard_rows=16)


@pytest.fixture(scope="session")
def plain_model(model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def reference_logprobs(model, input_ids) -> np.ndarray:
    """log p(token_i | tokens_<i) from one plain unbatched forward pass (NaN at i = 0)."""
    import torch

    ids = torch.tensor(input_ids)[None]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    picked = logprobs[:-1].gather(1, ids[0, 1:, None])[:, 0].numpy()
    return np.concatenate([[np.nan], picked]), logprobs


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, model_dir):
    """A random-weight stand-in for logic tests: the embedded model's tokenizer and chat template
    on a 2-layer, 64-wide Llama. It loads and scores in a blink; its scores mean nothing."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return str(folder)


def assert_tables_equal(got, expected):
    """Same columns, rows and values; NaN (unscored tokens) equal to NaN."""
    assert got.column_names == expected.column_names and got.num_rows == expected.num_rows
    for name in expected.column_names:
        a, b = got.column(name).combine_chunks(), expected.column(name).combine_chunks()
        while pa.types.is_list(a.type):
            assert a.offsets.to_pylist() == b.offsets.to_pylist(), name
            a, b = a.flatten(), b.flatten()
        np.testing.assert_array_equal(a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False), err_msg=name)


class ZeroScores:
    """Stands in for the model: every token's logprob, entropy and rank as 0."""

    def __call__(self, table: pa.Table, rejects):
        offsets = table.column("input_ids").combine_chunks().offsets
        total = offsets[-1].as_py() - offsets[0].as_py()
        zeros = pa.ListArray.from_arrays(pa.array(np.asarray(offsets) - offsets[0].as_py(), pa.int32()),
                                         pa.array(np.zeros(total, np.float32)))
        ranks = pa.ListArray.from_arrays(pa.array(np.asarray(offsets) - offsets[0].as_py(), pa.int32()),
                                         pa.array(np.zeros(total, np.int32)))
        table = table.append_column("logprobs", zeros).append_column("entropy", zeros).append_column("rank", ranks)
        return table, {"tokens": total}

    def close(self):
        pass


@pytest.fixture(scope="module")
def no_model():
    """`ftprep score` with ZeroScores for its model stage, for the tests of this module."""
    import ftprep.commands.score as score

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(score, "build_score_stage", lambda *args: ZeroScores())
        yield
