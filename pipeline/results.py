"""What a Python call of score, regen or mask returns: the dataset it wrote, with what the run
reported.

    train = ftprep.mask(scored, output="train")
    train.rejected, train.reject_reasons      # 2, {"fewer than 1 supervised tokens left": 2}
    train.stats["masked_share"], train.output  # 0.21, PosixPath('train')
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import datasets

from ftprep.summary import read_rejects, read_stats, run_summary


class RowsRejectedWarning(UserWarning):
    """Rows of the input were rejected: the result's `rejects` lists them with their reasons."""


class RunDataset(datasets.Dataset):
    """The dataset a run wrote, as `datasets.load_from_disk(output)` opens it, with what the run
    reported: `output` (its folder), `stats` (stats.json), `rejects` (rejects.jsonl's rows:
    index, id, stage, reason), `rejected` (their count), `reject_reasons` (count per reason) and
    `summary` (what `--json` prints). A dataset made from it (map, select...) is a plain
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
        result = cls(loaded.data, info=loaded.info, split=loaded.split, fingerprint=loaded._fingerprint)
        result.output = Path(folder)
        result.stats = read_stats(Path(folder))
        result.rejects = read_rejects(Path(folder))
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
