"""`ftprep mask`: scores become a training dataset (input_ids, attention_mask, labels, and
loss_weights or KL targets where the strategy makes them), shard by shard. Needs no model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ftprep.commands import shard_command
from ftprep.engines import ShardWork
from ftprep.runtime import library_versions
from ftprep.settings import Settings, positive, setting
from ftprep.stages.anchor import ANCHOR_RULES
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import MaskStage, candidate_perplexities, training_schema, weight_quantiles
from ftprep.stages.strategies import AGAINST_LOGPROBS, REGISTRY, STRATEGIES, TARGETS, WEIGHT_FNS, check_mask_settings, strategy_named
from ftprep.writers import dataset_files, read_arrow, read_shards, verify_output

SUMMARY = "Turn SCORED into a training dataset: input_ids, attention_mask, labels (and loss_weights)."
STRATEGY_HELP = "How scores become labels or weights: " + "; ".join(f"{s.name}: {s.summary}" for s in REGISTRY.values()) + "."


@dataclass(frozen=True, kw_only=True)
class MaskSettings(Settings):
    scored: str = setting(argument=True, path=True, help="A folder written by ftprep score.")
    output: str = setting(flags=("-o", "--output"), help="Folder for the training dataset.")
    strategy: str = setting("threshold", choices=STRATEGIES, help=STRATEGY_HELP)
    threshold: float = setting(2.5, low=1, low_open=True, help="threshold: mask assistant tokens with perplexity above this.")
    quantile: float = setting(0.2, low=0, high=1, low_open=True, high_open=True, help="quantile: share of assistant tokens to mask.")
    scope: str = setting("sample", choices=("sample", "dataset"), help="quantile: per row or over the dataset.")
    weight_fn: str = setting("gauss", choices=WEIGHT_FNS, help="soft: exp(-((ppl-1)/sigma)^2) or p^alpha.")
    sigma: float = positive(0.75, help="soft gauss width.")
    alpha: float = positive(1.0, help="soft prob exponent.")
    min_weight: float = setting(0.0, low=0, high=1, help="soft: weights below this are raised to it.")
    keep_eos: bool = setting(True, toggle=True, help="Keep end-of-turn tokens supervised (so the model learns to stop).")
    min_kept: int = setting(1, low=0, help="Reject rows left with fewer supervised tokens.")
    weights: bool | None = setting(None, toggle=True, help="Write loss_weights (default: only for soft).")
    target: str = setting("hf", choices=TARGETS,
                          help="Trainer the columns are for: hf keeps loss_weights; trl, axolotl and llama-factory get "
                               "input_ids, attention_mask, labels only (axolotl with --strategy anchor: also its KD "
                               "plugin's target_* columns).")
    against: str | None = setting(None, path=True,
                                  help="delta: the same input scored with a second model (ftprep score --model B).")
    delta: float = setting(2.5, help="delta: mask assistant tokens whose perplexity under the --against model exceeds "
                                     "the one in SCORED by more than this.")
    anchors: str = setting("all", choices=ANCHOR_RULES,
                           help="anchor: label every assistant token the model ranks below its greedy choice (the "
                                "paper's rule under teacher forcing), or only the first of each assistant turn.")
    confidence: float = setting(1.0, low=0, high=1, low_open=True,
                                help="anchor: c_t, the anchors' target is c_t x their label + (1 - c_t) x the reference distribution.")


@dataclass(frozen=True)
class ScoredShardRead:
    """Where one shard of a scored dataset is, with what --against adds to it."""

    shard: int
    count: int
    path: str
    first_row: int  # the shard's first row in the scored dataset (rejects name rows by it)
    against: str | None = None
    against_rows: np.ndarray | None = None


def read_scored_shard(read: ScoredShardRead) -> pa.Table:
    """A scored shard, with each row's number in the scored dataset as its `index` (and, for
    --against, the second model's logprobs beside the first's)."""
    table = read_arrow(read.path)
    table = table.append_column("index", pa.array(np.arange(read.first_row, read.first_row + table.num_rows), pa.int64()))
    if read.against is not None:
        from ftprep.against import AgainstScores

        # B's shards are memory-mapped: opening them again per shard costs little, and keeps
        # a Ray task from needing anything but paths.
        table = table.append_column(AGAINST_LOGPROBS, AgainstScores.open(read.against).logprobs_for(read.against_rows))
    return table


class MaskCommand:
    name = "mask"
    made_from = "scores"
    device = "cpu"

    def __init__(self, settings: MaskSettings, executor=None):
        self.settings = settings
        self.output = settings.output
        self.config = settings.to_dict()
        self.scored_dir = Path(settings.scored)
        self.scored = verify_output(self.scored_dir)
        if self.scored is None or self.scored.get("stage") != "score":
            raise FtprepError(f"{settings.scored} is not a scored dataset (no ftprep.json from ftprep score): run ftprep score first")
        if not self.scored.get("counts", {}).get("rows_out"):
            raise FtprepError(f"{settings.scored} has no rows (all were rejected: see its rejects.jsonl): nothing to mask")
        check_mask_settings(self.config, self.scored["config"])
        self.end_of_turn_ids = self.scored["tokenizer"]["end_of_turn_ids"]
        self.against, self.against_rows = against_scores(settings, self.scored_dir)

    def identity(self) -> dict:
        identity = {"command": "mask", "settings": self.settings.result_settings(), "scored": self.scored.get("run_identity")}
        if self.against is not None:
            identity["against"] = self.against.manifest.get("run_identity")
        return identity

    def total_rows(self) -> int:
        return self.scored["counts"]["rows_out"]

    def shard_reads(self, executor=None) -> list[ScoredShardRead]:
        shards, first_row = [], 0
        for shard, path in enumerate(dataset_files(self.scored_dir)):
            rows = read_arrow(path).num_rows
            # Absolute paths: a Ray task does not share this process's working directory.
            shards.append(ScoredShardRead(shard, rows, str(path.resolve()), first_row,
                                          str(self.against.folder.resolve()) if self.against else None,
                                          self.against_rows[shard] if self.against else None))
            first_row += rows
        return shards

    def work(self) -> ShardWork:
        context = strategy_named(self.settings.strategy).prepare(self.config, self._candidate_perplexities)
        return ShardWork(read=read_scored_shard, stages=(MaskStage(self.config, self.end_of_turn_ids, context),))

    def _candidate_perplexities(self):
        """Each scored shard's mask candidates, for strategies that look at the whole dataset first."""
        for read in self.shard_reads():
            table = read_scored_shard(ScoredShardRead(read.shard, read.count, read.path, read.first_row))
            yield candidate_perplexities(table.select(["index", "input_ids", "assistant_mask", "logprobs"]),
                                         self.end_of_turn_ids, self.settings.keep_eos)

    def schema(self) -> pa.Schema:
        return training_schema(self.config)

    def finish(self, stats: dict) -> tuple[dict, dict]:
        if stats.get("assistant_tokens"):
            stats["masked_share"] = stats["masked_tokens"] / stats["assistant_tokens"]
            stats["mean_weight"] = stats["weight_sum"] / stats["assistant_tokens"]
            if "weight_histogram" in stats:  # soft weights: how they spread, beside their mean
                stats["weight_quantiles"] = weight_quantiles(stats.pop("weight_histogram"))
            if "anchor_tokens" in stats:
                stats["anchor_share"] = stats["anchor_tokens"] / stats["assistant_tokens"]
        manifest = {
            "stage": "mask",
            "config": self.config,
            "scored": {"path": str(self.scored_dir.resolve()), "run_identity": self.scored.get("run_identity")},
            "model": self.scored["model"],
            "tokenizer": self.scored["tokenizer"],
            "versions": library_versions(),
            "counts": {key: stats.get(key, 0) for key in ("rows_in", "rows_out", "rows_rejected")},
        }
        if self.against is not None:
            manifest["against"] = {"path": str(self.against.folder.resolve()),
                                   "run_identity": self.against.manifest.get("run_identity"), "model": self.against.manifest["model"]}
        return manifest, stats


def against_scores(settings: MaskSettings, scored_dir: Path):
    """For --against: the second scores and, per scored shard, the rows that go with it.

    Checked in full before any output exists, so a mismatch leaves nothing half-written behind.
    """
    if not settings.against:
        return None, None
    from ftprep.against import AgainstScores

    against = AgainstScores.open(settings.against)
    columns = ["id", "input_ids", "assistant_mask", "logprobs"]
    return against, against.rows_for(scored_dir, [table.select(columns) for table in read_shards(scored_dir)])


cli = shard_command("mask", MaskSettings, MaskCommand, SUMMARY, model=False)
