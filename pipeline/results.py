"""What a Python call of score, regen or mask returns: the dataset it wrote, with what the run
reported.

    train = ftprep.mask(scored, output="train")
    train.rejected, train.reject_reasons      # 2, {"fewer than 1 supervised tokens left": 2}
    train.stats["masked_share"], train.output  # 0.21, PosixPath('train')
    train.info["rejected"], train.info["reject_reasons"]  # the same, beside datasets' info
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import datasets

from ftprep.summary import read_rejects, read_stats, run_summary


class RowsRejectedWarning(UserWarning):
    """Rows of the input were rejected: the result's `rejects` lists them with their reasons."""


class RunInfo(datasets.DatasetInfo):
    """datasets' DatasetInfo of a run's output, which also answers for the run:
    `info["rejected"]`, `info["reject_reasons"]`, `info["rejects"]`, `info["stats"]`,
    `info["rows_in"]`, `info["rows_out"]`, `info["output"]` (keys() lists them). The run's figures
    are not DatasetInfo fields: they are not saved with the dataset, and a copy (what map or
    select give the dataset they make) is a plain DatasetInfo."""

    @classmethod
    def of(cls, info: datasets.DatasetInfo, run: dict) -> "RunInfo":
        import dataclasses

        made = cls(**{item.name: getattr(info, item.name) for item in dataclasses.fields(datasets.DatasetInfo)})
        made._run = run
        return made

    def __getitem__(self, key: str):
        return self._run[key]

    def __contains__(self, key) -> bool:
        return key in self._run

    def keys(self):
        return self._run.keys()

    def get(self, key: str, default=None):
        return self._run.get(key, default)

    def copy(self) -> datasets.DatasetInfo:
        import copy

        return datasets.DatasetInfo(**{key: copy.deepcopy(value) for key, value in self.__dict__.items() if key != "_run"})


class RunDataset(datasets.Dataset):
    """The dataset a run wrote, as `datasets.load_from_disk(output)` opens it, with what the run
    reported: `output` (its folder), `stats` (stats.json), `rejects` (rejects.jsonl's rows:
    index, id, stage, reason), `rejected` (their count), `reject_reasons` (count per reason) and
    `summary` (what `--json` prints); `info` (a RunInfo) answers the same by key
    (`info["rejected"]`). A dataset made from it (map, select...) is a plain
    Dataset, or holds None there."""

    output: Path | None = None
    stats: dict | None = None
    rejects: list[dict] | None = None

    @property
    def rejected(self) -> int:
        return len(self.rejects or [])

    @property
    def reject_reasons(self) -> dict[str, int]:
        return dict((self.stats or {}).get("reject_reasons", {}))

    @property
    def summary(self) -> dict:
        return run_summary(self.output, self.stats or {})

    @classmethod
    def open(cls, folder) -> "RunDataset":
        """The output folder of a finished run, with its stats and rejects."""
        loaded = datasets.load_from_disk(str(folder))
        stats, rejects = read_stats(Path(folder)), read_rejects(Path(folder))
        run = {**run_summary(Path(folder), stats), "output": Path(folder), "stats": stats, "rejects": rejects,
               "rejected": len(rejects)}
        result = cls(loaded.data, info=loaded.info, split=loaded.split, fingerprint=loaded._fingerprint)
        result._info = RunInfo.of(result._info, run)  # after __init__, which copies the info it is given
        result.output, result.stats, result.rejects = Path(folder), stats, rejects
        return result


def open_result(folder) -> RunDataset:
    with quiet_datasets():
        return RunDataset.open(folder)


@contextlib.contextmanager
def quiet_datasets():
    """No progress bars from `datasets` (Saving the dataset, Loading dataset from disk): the
    call's own progress is what it shows. The user's setting is restored after."""
    was_disabled = datasets.are_progress_bars_disabled()
    if not was_disabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
