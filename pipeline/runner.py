"""The runner: the one skeleton every shard command shares.

    resolve the output -> skip finished shards -> read -> stages -> commit, per shard
    -> merge the shards' stats -> finalize (manifest, stats, rejects, dataset metadata)

A command (ftprep.commands.score, regen, mask) says what it does as a ShardCommand; the
engine, local or Ray (ftprep.engines), says where each shard runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Protocol

import pyarrow as pa

from ftprep.engines import EngineOptions, ShardWork, open_engine
from ftprep.progress import Progress
from ftprep.writers import ShardedOutput, merge_counters, read_manifest


class ShardCommand(Protocol):
    name: str  # score | regen | mask: the progress label
    output: str
    device: str  # where the model runs ("cpu" without a model)
    made_from: str  # "input" or "scores": what an already complete output was made from

    def identity(self) -> dict: ...  # what a resumed run must share with the run it resumes
    def total_rows(self) -> int | None: ...
    def shard_reads(self, executor) -> Iterable: ...
    def work(self) -> ShardWork: ...  # built only when there is work left
    def schema(self) -> pa.Schema: ...  # the columns of the output, also when it has no rows
    def finish(self, stats: dict) -> tuple[dict, dict]: ...  # (manifest, stats) from the shards' merged stats


def run(plan: Callable[[object], ShardCommand], engine: EngineOptions = EngineOptions(), overwrite: bool = False,
        echo=print) -> dict:
    """Run the command `plan(executor)` describes, and return its manifest."""
    with open_engine(engine) as executor:
        command = plan(executor)
        output = ShardedOutput(command.output, command.identity(), overwrite=overwrite)
        if output.complete:
            echo(f"{command.output} is already complete (same {command.made_from} and settings): nothing to do")
            return read_manifest(Path(command.output))
        progress = Progress(command.name, command.total_rows())
        executor.run(output, command.shard_reads(executor), command.work(), progress, command.device)
        manifest, stats = command.finish(merge_counters([meta["stats"] for meta in output.shard_metas()]))
        output.finalize(command.schema(), manifest, stats)
        return manifest
