import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ftprep.config import ScoreConfig
from ftprep.models import load_tokenizer, resolve_model
from ftprep.runner import run_score
from ftprep.writers import read_shards

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def run_cli(*args, check=True, **kwargs) -> subprocess.CompletedProcess:
    """Run the `ftprep` command as a user would, from the repo root."""
    script = Path(sys.executable).parent / "ftprep"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "ftprep.cli"]
    result = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=REPO, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"ftprep {' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}")
    return result


def load_table(folder):
    import pyarrow as pa

    return pa.concat_tables(list(read_shards(Path(folder))))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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
    run_score(ScoreConfig(input=str(DATA / "sample.jsonl"), output=str(output), shard_rows=16), echo=lambda *_: None)
    return output


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
