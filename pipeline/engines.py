"""Engines run a command's shards: one after another in this process (local), or spread over
a Ray cluster (ray). They share one description of the work and one output, so both write
the same shards, manifest and stats, and either resumes what the other left.

A command describes its work on one shard as a ShardWork:
  read(where)         -> the shard's rows as an Arrow table with an `index` column
  stages              -> CPU stages run where the shard is read (normalize, tokenize; mask)
  build_model_stage() -> the model stage (score, regen), loaded once per worker; None: none
Every stage is `stage(table, rejects) -> (table, stats)`. `where` is anything with .shard and
.count (the shard's input rows, for progress).

On Ray, reading and the CPU stages run as Ray Data tasks, the model stage in a fixed pool of
actors (one model copy per actor, one actor per GPU), and the driver commits each shard as it
comes back: shards land in the output folder of the machine that runs ftprep. The model actors
tell a small inbox actor of each batch they finish, which the driver reads for its progress bar.
"""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ftprep.progress import Progress, ShardProgress
from ftprep.read_ahead import ReadAhead
from ftprep.settings import Settings, setting
from ftprep.stages import Rejects
from ftprep.stages.errors import FtprepError
from ftprep.stages.errors import first_line as _first_line
from ftprep.writers import ShardedOutput

ENGINES = ("local", "ray")
# Shards the local engine reads and tokenizes ahead of the model, in a background thread; 0 reads
# each one when the model needs it (the same output, in more time).
READ_AHEAD_SHARDS = 1
PREPARE_TASK_MEMORY = 256 * 2**20
# How often the Ray driver reads the workers' batch reports (at most: never slower than the
# progress lines it prints).
REPORT_POLL_SECONDS = 0.5
REPORT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class ShardWork:
    read: Callable[[Any], Any]
    stages: tuple = ()
    build_model_stage: Callable[[], Any] | None = None
    columns: tuple[str, ...] | None = None  # what is committed; None: every column the last stage gives
    tokens_key: str = "tokens"


@dataclass(frozen=True, kw_only=True)
class EngineOptions(Settings):
    """Where the shards run; not part of a run's settings: either engine gives the same output."""

    engine: str = setting("local", choices=ENGINES, identity=False,
                          help="local: this process; ray: a Ray cluster (pip install 'ftprep[ray]'), with the same output.")
    ray_address: str | None = setting(None, identity=False,
                                      help="ray: the cluster to join, e.g. auto or HOST:6379 (default: RAY_ADDRESS, else a cluster "
                                           "started on this machine with `ray start`, else a Ray instance for this run).")
    num_workers: int | None = setting(None, low=0, low_open=True, identity=False,
                                      help="ray: how many workers, each in its own actor (default: one per GPU in the cluster; 1 on CPU).")
    gpus_per_worker: float | None = setting(None, low=0, identity=False,
                                            help="ray: GPUs each worker holds (default: 1 on GPU, 0 on CPU).")

    def check(self) -> None:
        if self.engine == "local" and (self.ray_address or self.num_workers or self.gpus_per_worker is not None):
            raise FtprepError("--ray-address, --num-workers and --gpus-per-worker need --engine ray")


def open_engine(options: EngineOptions):
    """The engine the options ask for, connected (Ray) and ready to say whether it has GPUs."""
    options.check()
    return RayEngine(options) if options.engine == "ray" else LocalEngine()


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def run_stages(stages, table, rejects: Rejects, stats: dict):
    for stage in stages:
        table, stage_stats = stage(table, rejects)
        stats.update(stage_stats)
    return table


def prepare_shard_input(work: ShardWork, where) -> tuple:
    """Read one shard and run the CPU stages: (table, rejects, stats, rows read)."""
    started = time.perf_counter()
    table = work.read(where)
    rejects, stats = Rejects(), {}
    table = run_stages(work.stages, table, rejects, stats)
    stats["seconds"] = time.perf_counter() - started
    return table, rejects, stats, where.count


def run_model_step(step, prepared: tuple, columns=None) -> tuple:
    """The model half of a shard, then the (table, rejects, stats) the output commits."""
    table, rejects, stats, rows_in = prepared
    if step is not None and table.num_rows:
        table, seconds = timed(run_stages, (step,), table, rejects, stats)
        stats["seconds"] += seconds
    return finish_shard(table, rejects, stats, rows_in, columns)


def finish_shard(table, rejects: Rejects, stats: dict, rows_in: int, columns) -> tuple:
    rows_out = table.num_rows
    counts = {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": len(rejects), "reject_reasons": rejects.reasons()}
    committed = table.select(list(columns)) if columns is not None and rows_out else table
    return (committed if rows_out else None), rejects.rows(), {**counts, **stats}

class _Engine:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass


class LocalEngine(_Engine):
    """Shards one after another in this process, read in one pass over the input; the next one
    is read and run through the CPU stages while the model works on the current one."""

    def shard_reads(self, source, shard_rows: int):
        return source.shard_reads(shard_rows, seekable=False)

    def cuda_available(self) -> bool:
        import torch

        return torch.cuda.is_available()

    def run(self, output: ShardedOutput, shards: Iterable, work: ShardWork, progress: Progress, device: str = "cpu") -> None:
        step, shard_progress = None, ShardProgress(progress)

        def prepare(where):  # None for a shard an earlier run committed
            return (where, None if output.has_shard(where.shard) else prepare_shard_input(work, where))

        try:
            with ReadAhead(shards, prepare, depth=READ_AHEAD_SHARDS) as ahead:
                for where, prepared in ahead:
                    if prepared is None:
                        progress.update(where.count)
                        continue
                    # Built on the first shard left to do: a finished run loads no model.
                    if step is None and work.build_model_stage is not None:
                        step = work.build_model_stage()
                        if hasattr(step, "on_batch"):  # a stage that reports its batches moves the bar within a shard
                            step.on_batch = shard_progress.batch
                    if READ_AHEAD_SHARDS:  # the model is loaded (vLLM's processes started): read on meanwhile
                        ahead.start()
                    table, rejects, stats = run_model_step(step, prepared, work.columns)
                    output.write_shard(where.shard, table, rejects, stats)
                    shard_progress.finish(where.count, stats.get(work.tokens_key, 0))
        finally:
            progress.close()
            if step is not None:
                step.close()


class RayEngine(_Engine):
    """Shards spread over a Ray cluster; this process plans them and commits the results."""

    def __init__(self, options: EngineOptions):
        self.options = options
        self.ray = _import_ray()
        self.connected_here = False
        self._connect()
        self.resources = self.ray.cluster_resources()

    def _connect(self) -> None:
        import logging

        ray = self.ray
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ftprep's own bar counts rows and tokens
        context.print_on_execution_start = False
        context.execution_options.preserve_order = False  # shards are committed by index, in any order
        if ray.is_initialized():
            return
        address = self.options.ray_address or os.environ.get("RAY_ADDRESS")
        _check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                     configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as error:
            where = f"the Ray cluster at {address}" if address else "a Ray instance on this machine"
            reason = _first_line(error).split(". ")[0].rstrip(".")
            hint = "start one with `ray start --head`, or leave --ray-address out to start one here"
            if address not in (None, "auto", "local") and not os.environ.get("RAY_AUTH_MODE"):
                # Ray turns token authentication on for clusters it starts (2.59 and later); a
                # client that names the address must then be told to send the token.
                hint = ("if the cluster uses token authentication, set RAY_AUTH_MODE=token here, "
                        "with its token in RAY_AUTH_TOKEN (`ray get-auth-token` on the head node)")
            raise FtprepError(f"cannot connect to {where}: {reason}; {hint}") from error
        self.connected_here = True

    def cuda_available(self) -> bool:
        return self.resources.get("GPU", 0) > 0

    def shard_reads(self, source, shard_rows: int):
        # Workers read their own shards: the driver only says where each one starts.
        return source.shard_reads(shard_rows, seekable=True)

    def run(self, output: ShardedOutput, shards: Iterable, work: ShardWork, progress: Progress, device: str = "cpu") -> None:
        ray = self.ray
        counts, pending = {}, []
        for where in shards:
            if output.has_shard(where.shard):
                progress.update(where.count)
            else:
                counts[where.shard] = where.count
                pending.append({"shard": where.shard, "where": pickle.dumps(where, protocol=5)})
        if not pending:
            progress.close()
            return
        dataset = ray.data.from_items(pending, override_num_blocks=len(pending))
        # Serialized by hand: Ray Data sees a shard number and bytes, never ftprep's tables or dicts.
        # The memory reservation (a shard's rows and tokens take far less) also keeps Ray Data
        # from fusing these tasks into the model actors, where tokenizing would wait on the model.
        dataset = dataset.map(_PrepareShard(work), num_cpus=task_cpus(self.resources), memory=PREPARE_TASK_MEMORY)
        reports, inbox = ShardReports(progress), None
        if work.build_model_stage is not None:
            inbox = ray.remote(num_cpus=0)(BatchInbox).remote()
            workers, worker_cpus, worker_gpus, threads = worker_resources(self.resources, self.options, device)
            dataset = dataset.map_batches(
                _ModelWorker, fn_constructor_args=(work.build_model_stage, work.columns, None if worker_gpus else threads, inbox),
                batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=worker_cpus, num_gpus=worker_gpus or None)
        poller = _ReportPoller(ray, inbox, reports, min(REPORT_POLL_SECONDS, progress.interval)) if inbox else None
        try:
            for row in dataset.iter_rows():
                shard = int(row["shard"])
                result = pickle.loads(row["result"])
                if isinstance(result, WorkerError):
                    raise FtprepError(result.message)
                table, rejects, stats = result
                output.write_shard(shard, table, rejects, stats)
                if inbox is not None:  # the shard's own batches first, then its committed counts
                    reports.apply(ray.get(inbox.take.remote()))
                reports.finish(shard, counts[shard], stats.get(work.tokens_key, 0))
        finally:
            if poller is not None:
                poller.stop()
                ray.kill(inbox)
            progress.close()

    def close(self) -> None:
        # Stops the Ray instance this command started, or only disconnects from a cluster.
        if self.connected_here and self.ray.is_initialized():
            self.ray.shutdown()


def task_cpus(resources: dict) -> float:
    """CPUs a reading and tokenizing task takes: at most half the cluster's."""
    return min(1.0, resources.get("CPU", 1) / 2)


def worker_resources(resources: dict, options: EngineOptions, device: str) -> tuple[int, float, float, int]:
    """(workers, CPUs and GPUs each worker reserves, torch threads per worker on CPU).

    Workers leave a task's CPUs free, or reading and tokenizing would wait for ever for one:
    on a 2-core machine two CPU workers reserve half a core each, and the tasks get the other.
    A CPU worker still runs cores / workers threads: the tasks are short, the model is not."""
    cpus, gpus = resources.get("CPU", 1), resources.get("GPU", 0)
    on_gpu = device.startswith("cuda")
    per_worker_gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if on_gpu else 0.0)
    if on_gpu and per_worker_gpus <= 0:
        raise FtprepError("--gpus-per-worker must be above 0 on GPU: each worker holds one copy of the model")
    if not on_gpu and per_worker_gpus > 0:
        raise FtprepError(f"--gpus-per-worker {per_worker_gpus:g} with the model on the CPU: drop it, or use --device cuda")
    workers = options.num_workers or (int(gpus // per_worker_gpus) if on_gpu else 1)
    if on_gpu and (workers == 0 or workers * per_worker_gpus > gpus):
        raise FtprepError(f"{max(workers, 1)} workers x {per_worker_gpus:g} GPUs need {max(workers, 1) * per_worker_gpus:g} "
                          f"GPUs, the Ray cluster has {gpus:g}: lower --num-workers or --gpus-per-worker")
    worker_cpus = min(1.0 if on_gpu else cpus, (cpus - task_cpus(resources)) / workers)
    return workers, worker_cpus, per_worker_gpus, max(1, round(cpus / workers))


class BatchInbox:
    """A Ray actor (no CPU of its own): model workers tell it of each batch they finish, the
    driver takes what came in since it last asked."""

    def __init__(self):
        self.reports: list[tuple[int, int, int]] = []

    def add(self, shard: int, rows: int, tokens: int) -> None:
        self.reports.append((shard, rows, tokens))

    def take(self) -> list[tuple[int, int, int]]:
        reports, self.reports = self.reports, []
        return reports


class ShardReports:
    """Batch reports of shards run elsewhere, on one Progress: a shard's reports move the bar
    until the shard is committed, then its committed counts top it up. A report that arrives
    after its shard's commit is dropped: the top-up already counted it."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.running: dict[int, ShardProgress] = {}
        self.committed: set[int] = set()
        self.lock = threading.Lock()  # the driver's poller and its commit loop both report

    def apply(self, reports: Iterable[tuple[int, int, int]]) -> None:
        with self.lock:
            for shard, rows, tokens in reports:
                if shard not in self.committed:
                    self.running.setdefault(shard, ShardProgress(self.progress)).batch(rows, tokens)

    def finish(self, shard: int, rows: int, tokens: int) -> None:
        with self.lock:
            self.committed.add(shard)
            (self.running.pop(shard, None) or ShardProgress(self.progress)).finish(rows, tokens)


class _ReportPoller:
    """A driver thread that moves the progress bar with the workers' batch reports while the
    commit loop waits for whole shards."""

    def __init__(self, ray, inbox, reports: ShardReports, every: float):
        self.ray, self.inbox, self.reports = ray, inbox, reports
        self.every = max(every, 0.01)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="ftprep-progress", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.reports.apply(self.ray.get(self.inbox.take.remote(), timeout=REPORT_TIMEOUT_SECONDS))
            except Exception:  # the cluster going away ends the run in the commit loop, with its own error
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=REPORT_TIMEOUT_SECONDS)  # never holds up the end of a run for long


@dataclass(frozen=True)
class WorkerError:
    """A user-facing error (FtprepError) met by a task or worker, sent back as its result: Ray
    would wrap a raised one in its own exceptions, and the driver prints it as one line."""

    message: str


class _PrepareShard:
    """A Ray Data task: read one shard's input and run the CPU stages."""

    def __init__(self, work: ShardWork):
        self.work = work

    def __call__(self, row: dict) -> dict:
        where = pickle.loads(row["where"])
        try:
            prepared = prepare_shard_input(self.work, where)
            if self.work.build_model_stage is None:
                prepared = run_model_step(None, prepared, self.work.columns)
        except FtprepError as error:
            prepared = WorkerError(str(error))
        key = "result" if self.work.build_model_stage is None else "prepared"
        return {"shard": row["shard"], key: pickle.dumps(prepared, protocol=5)}


class _ModelWorker:
    """A Ray actor: one model copy, loaded once, then one shard per call."""

    def __init__(self, build_model_stage, columns, threads: int | None, inbox=None):
        if threads:
            import torch

            torch.set_num_threads(min(threads, os.cpu_count() or threads))
        self.columns = columns
        self.inbox = inbox
        self.step, self.error = None, None
        try:
            self.step = build_model_stage()
        except FtprepError as error:
            self.error = WorkerError(str(error))

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        results = [pickle.dumps(self._run(int(shard), pickle.loads(prepared)), protocol=5)
                   for shard, prepared in zip(batch["shard"], batch["prepared"])]
        return {"shard": batch["shard"], "result": np.array(results, dtype=object)}

    def _run(self, shard: int, prepared):
        if isinstance(prepared, WorkerError) or self.error is not None:
            return self.error or prepared
        if self.inbox is not None and hasattr(self.step, "on_batch"):
            # Sent without waiting for an answer: the model never waits on the driver.
            self.step.on_batch = lambda rows, tokens: self.inbox.add.remote(shard, rows, tokens)
        try:
            return run_model_step(self.step, prepared, self.columns)
        except FtprepError as error:
            return WorkerError(str(error))


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise FtprepError("--engine ray needs Ray Data: pip install 'ftprep[ray]'") from error
    return ray


def _check_reachable(address: str | None) -> None:
    """Fail in seconds on a cluster address nothing answers at: Ray itself retries for ever."""
    import socket

    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        raise FtprepError(f"--ray-address {address}: give HOST:PORT (the head node's GCS port, 6379 by default), "
                          "ray://HOST:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise FtprepError(f"cannot reach the Ray cluster at {address}: {error.strerror or error}; "
                          "start it with `ray start --head` or check --ray-address") from error

