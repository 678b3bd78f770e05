"""The runner: the one skeleton every command that writes an output shares.

    resolve the output -> lock it -> skip finished shards -> read -> stages -> commit, per shard
    -> merge the shards' stats -> finalize (manifest, stats, rejects, dataset metadata)

A command (ftprep.commands.score, regen, mask) says what it does as a ShardCommand; the
engine, local or Ray (ftprep.engines), says where each shard runs. A command that writes a few
files in one go (hft-plan, iv) is a FileCommand, run by `run_files`: the same lock, manifest,
refusal of damaged or foreign outputs, and a rerun that finds it complete does nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Callable, Iterable, Protocol

import pyarrow as pa

from ftprep.engines import EngineOptions, ShardWork, open_engine
from ftprep.manifest import MANIFEST, RunManifest, load_manifest
from ftprep.progress import Progress
from ftprep.settings import spec_of
from ftprep.stages.errors import FtprepError
from ftprep.writers import LOCK, FileOutput, OutputLock, ShardedOutput, check_output_folder, merge_counters

TOP_REASONS = 3


class ShardCommand(Protocol):
    name: str  # score | regen | mask: the progress label
    output: str
    settings: object  # the command's Settings: its path fields are the inputs the output must stay apart from
    device: str  # where the model runs ("cpu" without a model)
    made_from: str  # "input" or "scores": what an already complete output was made from

    def identity(self) -> dict: ...  # what a resumed run must share with the run it resumes
    def total_rows(self) -> int | None: ...
    def shard_reads(self, executor) -> Iterable: ...
    def work(self) -> ShardWork: ...  # built only when there is work left
    def schema(self) -> pa.Schema: ...  # the columns of the output, also when it has no rows
    def finish(self, stats: dict) -> tuple[RunManifest, dict]: ...  # (manifest, stats) from the shards' merged stats


def run(plan: Callable[[object], ShardCommand], engine: EngineOptions = EngineOptions(), overwrite: bool = False,
        echo=print) -> RunManifest:
    """Run the command `plan(executor)` describes, and return its manifest. `plan` is
    partial(CommandClass, settings): its output is checked from the settings before the command
    opens its input or resolves a model."""
    check_output_early(plan)
    with open_engine(engine) as executor:
        command = plan(executor)
        check_output_apart(command.output, input_paths(command.settings))
        with OutputLock(command.output):
            output = ShardedOutput(command.output, command.identity(), overwrite=overwrite, echo=echo)
            if output.complete:
                echo(f"{command.output} is already complete (same {command.made_from} and settings): nothing to do")
                return check_some_rows(command.output, load_manifest(Path(command.output) / MANIFEST))
            if done := output.committed_count():
                echo(f"{command.output}: resuming an unfinished run, {done} shard{'s' if done > 1 else ''} already done")
            try:
                progress = Progress(command.name, command.total_rows())
                executor.run(output, command.shard_reads(executor), command.work(), progress, command.device)
            except BaseException:
                discard_unused_partial(output.partial)
                raise
            manifest, stats = command.finish(merge_counters([meta["stats"] for meta in output.shard_metas()]))
            output.finalize(command.schema(), manifest, stats)
        return check_some_rows(command.output, manifest, stats.get("reject_reasons", {}))


class FileCommand(Protocol):
    output: str  # the first file it writes: its manifest goes beside it
    settings: object
    made_from: str

    def identity(self) -> dict: ...
    def files(self) -> list[Path]: ...  # every file it writes, `output` first
    def write(self) -> RunManifest: ...  # writes the files (each atomically); the manifest without identity and records


def run_files(plan: Callable[[], FileCommand], overwrite: bool = False, echo=print) -> RunManifest:
    """Run the command `plan()` describes, unless its output is complete already; return its manifest."""
    command = plan()
    check_output_apart(command.output, input_paths(command.settings))
    output = Path(command.output)
    with OutputLock(str(output.parent), lock_name=f".{output.name}{LOCK}"):
        record = FileOutput(command.files(), command.identity(), overwrite=overwrite, echo=echo)
        if record.complete:
            echo(f"{command.output} is already complete (same {command.made_from} and settings): nothing to do")
            return record.manifest
        return record.finalize(command.write())


def check_output_early(plan) -> None:
    """What the output's settings alone tell, in a moment: -o is an input, a file, or a folder of
    someone else's files. The same checks run again once the output is locked."""
    settings = plan.args[0] if isinstance(plan, functools.partial) and plan.args else getattr(plan, "keywords", {}).get("settings")
    if settings is None or not getattr(settings, "output", None):
        return
    check_output_apart(settings.output, input_paths(settings))
    output = Path(settings.output).expanduser()
    if not (output / LOCK).exists():  # a run holds it, or held it: the lock's own checks say which
        check_output_folder(output)


def input_paths(settings) -> list[str]:
    """The files and folders a command reads: its settings' path fields that name one."""
    values = [getattr(settings, item.name) for item in dataclasses.fields(settings) if spec_of(item).path]
    return [value for value in values if isinstance(value, str) and Path(value).expanduser().exists()]


def check_output_apart(output: str, inputs: list[str]) -> None:
    """No command may write over what it reads: -o may not be an input, hold one or lie in one
    (symlinks resolved), with or without --overwrite."""
    target = Path(output).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if target == source:
            raise FtprepError(f"-o {output} is the input {given}: choose another -o (ftprep never writes over its input)")
        if target in source.parents:
            raise FtprepError(f"-o {output} holds the input {given}: choose another -o (ftprep never writes over its input)")
        if source in target.parents:
            raise FtprepError(f"-o {output} lies inside the input {given}: choose another -o")


def discard_unused_partial(partial: Path) -> None:
    """A run that failed before committing any shard leaves no unfinished run behind."""
    if partial.is_dir() and not any(partial.glob("shard-*.json")):
        shutil.rmtree(partial, ignore_errors=True)


def check_some_rows(output: str, manifest: RunManifest, reasons: dict | None = None) -> RunManifest:
    """A run whose every row was rejected wrote nothing to train on: that is an error to say."""
    if manifest.rows_out == 0:
        if reasons is None:
            reasons = _reasons_from_stats(Path(output))
        top = sorted(reasons.items(), key=lambda item: -item[1])[:TOP_REASONS]
        why = "; ".join(f"{count} {reason}" for reason, count in top)
        rejected = manifest.counts.rows_rejected if manifest.counts else 0
        raise FtprepError(f"all {rejected} rows were rejected ({why or 'no rows in the input'}): "
                          f"see {Path(output) / 'rejects.jsonl'}")
    return manifest


def _reasons_from_stats(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "stats.json").read_text()).get("reject_reasons", {})
    except (OSError, ValueError, AttributeError):
        return {}
