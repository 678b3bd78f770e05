"""`ftprep mask`: scores become a training dataset (input_ids, attention_mask, labels, and
loss_weights or KL targets where the strategy makes them), shard by shard. Needs no model."""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pyarrow as pa

from ftprep.commands import common as shared
from ftprep.commands import shard_command, shard_writes
from ftprep.engines import ShardWork
from ftprep.manifest import Counts, RunManifest, Upstream, open_run
from ftprep.runtime import library_versions
from ftprep.settings import Settings, setting
from ftprep.shared_phrases import kept_stats, notes, shared_tokens_stats
from ftprep.stages.errors import FtprepError
from ftprep.stages.mask import SHARED_COUNTS, MaskStage, candidate_perplexities, training_schema, weight_quantiles
from ftprep.stages.mask_settings import (
    DEFAULT_STRATEGY,
    MaskStageSettings,
    check_mask_settings,
    check_options_given,
    is_hard,
    shared_fields,
)
from ftprep.stages.shared_tokens import removed_shared_phrases, shared_ids, what_to_do
from ftprep.stages.strategies import AGAINST_LOGPROBS, REGISTRY
from ftprep.writers import dataset_files, merge_counters, read_arrow, read_shards

# The order of the settings, in ftprep.json's config and in --help: the command's own, the
# strategy, each strategy's options in the order they are registered, and the settings every
# strategy shares after the first OPTIONS_BEFORE_SHARED strategies' options (where they stood
# when the mask settings were one class: a run writes the bytes it always wrote). A strategy
# registered later has its options at the end.
OPTIONS_BEFORE_SHARED = 3


@dataclass(frozen=True)
class ScoredWith:
    """What the mask reads of the scored run's settings."""

    top_k: int = 0


def strategy_help() -> str:
    return "How scores become labels or weights: " + "; ".join(f"{s.name}: {s.summary}" for s in REGISTRY.values()) + "."


def _copy(item: dataclasses.Field, hints: dict) -> tuple:
    return (item.name, hints[item.name], dataclasses.field(default=item.default, metadata=item.metadata))


def settings_fields() -> list[tuple]:
    """The fields of MaskSettings for the strategies registered now."""
    own = [("scored", str, setting(argument=True, path=True, dataset=True, help="A folder written by ftprep score.")),
           ("output", str, shared.output("Folder for the training dataset.")),
           ("strategy", str, setting(DEFAULT_STRATEGY, choices=tuple(REGISTRY), help=strategy_help()))]
    stage_hints = typing.get_type_hints(MaskStageSettings)
    common = [_copy(item, stage_hints) for item in shared_fields()]
    options = []
    for index, strategy in enumerate(REGISTRY.values()):
        if index == OPTIONS_BEFORE_SHARED:
            options += common
        hints = typing.get_type_hints(strategy.Options)
        options += [_copy(item, hints) for item in dataclasses.fields(strategy.Options)]
    if len(REGISTRY) <= OPTIONS_BEFORE_SHARED:
        options += common
    return own + options


@functools.cache
def _settings_class(registered: tuple) -> type:
    return dataclasses.make_dataclass("MaskSettings", settings_fields(), bases=(Settings,), frozen=True, kw_only=True,
                                      namespace={"__module__": __name__, "__doc__": "The settings of ftprep mask: its own, "
                                                 "the strategy's and every registered strategy's options.",
                                                 "check_given": _check_given})


def _check_given(settings, given) -> None:
    check_options_given(settings.strategy, given)


def mask_settings() -> type:
    """MaskSettings as the strategies registered now make it (the same class while they stay)."""
    return _settings_class(tuple((name, id(strategy)) for name, strategy in REGISTRY.items()))


def __getattr__(name: str):
    # `from ftprep.commands.mask import MaskSettings`: the class of the strategies registered now.
    if name == "MaskSettings":
        return mask_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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

    def __init__(self, settings, executor=None):
        self.settings = settings
        self.output = settings.output
        self.config = settings.to_dict()
        self.stage_settings = MaskStageSettings.from_config(self.config)
        self.scored_dir = Path(settings.scored)
        self.scored = open_run(self.scored_dir, stages=("score",), refusal=f"{settings.scored} is not a scored dataset "
                               "(no ftprep.json from ftprep score): run ftprep score first")
        if not self.scored.rows_out:
            raise FtprepError(f"{settings.scored} has no rows (all were rejected: see its rejects.jsonl): nothing to mask")
        check_mask_settings(self.stage_settings, self.scored.settings_as(ScoredWith).top_k, settings.scored,
                            against_path(settings))
        self.end_of_turn_ids = list(self.scored.tokenizer.end_of_turn_ids)
        self.against, self.against_rows = against_scores(settings, self.scored_dir)
        self.kept_shared = []  # keep_shared: the phrases its first pass found, kept supervised

    def identity(self) -> dict:
        identity = {"command": "mask", "settings": self.settings.result_settings(), "scored": self.scored.run_identity}
        if self.against is not None:
            identity["against"] = self.against.manifest.run_identity
        return identity

    def total_rows(self) -> int:
        return self.scored.rows_out

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
        context = self.stage_settings.rule.prepare(self.stage_settings, self._candidate_perplexities)
        if self.stage_settings.keep_shared:
            self.kept_shared = self._shared_removed(context)
        stage = MaskStage(self.stage_settings, self.end_of_turn_ids, context, kept_ids=tuple(shared_ids(self.kept_shared)))
        return ShardWork(read=read_scored_shard, stages=(stage,))

    def _shared_removed(self, context) -> list:
        """For keep_shared, one pass over the dataset first: what this mask, without it, removes of
        what most rows share (judged over the whole dataset, as the warning is)."""
        without = MaskStage(dataclasses.replace(self.stage_settings, keep_shared=False), self.end_of_turn_ids, context)
        counts = merge_counters([without.shared_counts(read_scored_shard(read)) for read in self.shard_reads()])
        return removed_shared_phrases(counts, self.scored.rows_out)

    def _candidate_perplexities(self):
        """Each scored shard's mask candidates, for strategies that look at the whole dataset first."""
        for read in self.shard_reads():
            table = read_scored_shard(ScoredShardRead(read.shard, read.count, read.path, read.first_row))
            yield candidate_perplexities(table.select(["index", "input_ids", "assistant_mask", "logprobs"]),
                                         self.end_of_turn_ids, self.settings.keep_eos)

    def schema(self) -> pa.Schema:
        return training_schema(self.stage_settings)

    def finish_stats(self, stats: dict) -> dict:
        """The run's stats from its shards' merged ones (what --dry-run prints, and stats.json holds)."""
        rule = self.stage_settings.rule
        if not rule.makes_weights:  # weights that only follow the labels say nothing of their own
            stats.pop("weight_sum", None)
        if stats.get("assistant_tokens"):
            stats["masked_share"] = stats["masked_tokens"] / stats["assistant_tokens"]
            if rule.makes_weights:
                stats["mean_weight"] = stats["weight_sum"] / stats["assistant_tokens"]
            if "weight_histogram" in stats:  # soft weights: how they spread, beside their mean
                stats["weight_quantiles"] = weight_quantiles(stats.pop("weight_histogram"))
        rule.finish_stats(stats)
        from ftprep.models import load_tokenizer

        # Loaded only to decode what the shared-token lines name.
        tokenizer = functools.cache(lambda: load_tokenizer(self.scored.model.path))
        if self.stage_settings.keep_shared:
            stats.update(kept_stats(stats.get("kept_shared_tokens", 0), self.kept_shared, tokenizer))
        fixes = what_to_do(rule.looser, is_hard(rule, self.stage_settings))
        stats.update(shared_tokens_stats(stats.pop(SHARED_COUNTS, {}), stats.get("rows_in", 0), tokenizer,
                                         "the mask removes", fixes))
        return stats

    def finish(self, stats: dict) -> tuple[dict, dict]:
        stats = self.finish_stats(stats)
        against = None
        if self.against is not None:
            against = Upstream(str(self.against.folder.resolve()), self.against.manifest.run_identity, self.against.manifest.model)
        manifest = RunManifest(stage="mask", config=self.config, scored=Upstream(str(self.scored_dir.resolve()), self.scored.run_identity),
                               model=self.scored.model, tokenizer=self.scored.tokenizer, versions=library_versions(),
                               counts=Counts.from_stats(stats), against=against)
        return manifest, stats


def against_path(settings) -> str | None:
    """The second scoring given: the `against` option that a strategy which needs_against declares."""
    return getattr(settings, "against", None)


def against_scores(settings, scored_dir: Path):
    """For --against: the second scores and, per scored shard, the rows that go with it.

    Checked in full before any output exists, so a mismatch leaves nothing half-written behind.
    """
    if not against_path(settings):
        return None, None
    from ftprep.against import AgainstScores

    against = AgainstScores.open(against_path(settings))
    columns = ["id", "input_ids", "assistant_mask", "logprobs"]
    return against, against.rows_for(scored_dir, [table.select(columns) for table in read_shards(scored_dir)])


def shared_token_notes(settings) -> list[str]:
    """The lines stats.json's notes hold (the shared-token warning, what --keep-shared kept)."""
    from ftprep.writers import read_json_file

    return notes(read_json_file(Path(settings.output) / "stats.json", "stats.json"))


def dry_run_stats(settings) -> dict:
    """The stats a mask run with these settings would have, every shard masked in memory: no
    output folder, no lock, nothing written."""
    from ftprep.engines import prepare_shard_input, run_model_step

    plan = MaskCommand(settings)
    work = plan.work()
    shards = [run_model_step(None, prepare_shard_input(work, read))[2] for read in plan.shard_reads()]
    return plan.finish_stats(merge_counters(shards))


def print_dry_run(settings) -> None:
    from ftprep.views.stats import format_stats

    click.echo(f"dry run: nothing written; ftprep mask {settings.scored} with these settings would give:")
    click.echo(format_stats(dry_run_stats(settings)))


cli = shard_command("mask", mask_settings, MaskCommand, model=False, after=shared_token_notes, dry_run=print_dry_run,
                    writes=shard_writes("the training dataset (input_ids, attention_mask, labels, and the strategy's own columns)"))
