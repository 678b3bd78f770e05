"""`ftprep mask --strategy delta --against B`: B's scores, row for row beside the scored rows.

A and B are the same input scored under two models; their shard layouts may differ, so rows
are matched by id, and an id that repeats by its order of appearance (the k-th row with an
id in A goes with the k-th row with that id in B). Matched rows must hold the same input_ids,
and B must have scored every assistant token A scored; anything else is a run-level error,
raised before any output is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftprep.manifest import RunManifest, open_run
from ftprep.stages import flat_values, row_offsets
from ftprep.stages.errors import FtprepError
from ftprep.writers import read_shards

AGAINST_COLUMNS = ["id", "input_ids", "logprobs"]


def occurrence(codes: np.ndarray) -> np.ndarray:
    """How many earlier entries hold the same code: 0 for the first row with an id, 1 for the second..."""
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    group_start = np.searchsorted(ordered, ordered, side="left")
    result = np.empty(len(codes), dtype=np.int64)
    result[order] = np.arange(len(codes)) - group_start
    return result


def match_rows(ids: np.ndarray, against_ids: np.ndarray) -> np.ndarray:
    """For each of `ids`, the row of `against_ids` with the same id and occurrence, or -1."""
    if len(against_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    _, codes = np.unique(np.concatenate([ids, against_ids]).astype(str), return_inverse=True)
    codes = codes.astype(np.int64)
    stride = max(len(ids), len(against_ids)) + 1
    keys = codes[: len(ids)] * stride + occurrence(codes[: len(ids)])
    against_keys = codes[len(ids):] * stride + occurrence(codes[len(ids):])
    order = np.argsort(against_keys)
    sorted_keys = against_keys[order]
    position = np.minimum(np.searchsorted(sorted_keys, keys), len(order) - 1)
    return np.where(sorted_keys[position] == keys, order[position], -1)


@dataclass
class AgainstScores:
    folder: Path
    manifest: RunManifest
    # id, input_ids and logprobs of every row of B. The shards are memory-mapped and these
    # columns are not copied: memory holds B's ids (one string per row, for the matching) and
    # what `take` touches, not the whole of B.
    table: pa.Table

    @classmethod
    def open(cls, folder: str) -> "AgainstScores":
        path = Path(folder)
        manifest = open_run(path, stages=("score",), refusal=f"--against {folder} is not a scored dataset (no ftprep.json "
                            "from ftprep score): score the same input with the second model first")
        shards = [table.select(AGAINST_COLUMNS) for table in read_shards(path)]
        return cls(path, manifest, pa.concat_tables(shards))

    def rows_for(self, scored: Path, shards: list[pa.Table]) -> list[np.ndarray]:
        """For each shard of A (id, input_ids, assistant_mask, logprobs), the rows of B that go with its rows."""
        ids = np.concatenate([table.column("id").to_numpy(zero_copy_only=False) for table in shards] or [[]])
        rows = match_rows(ids, self.table.column("id").to_numpy(zero_copy_only=False))
        missing = np.flatnonzero(rows < 0)
        if len(missing):
            first = ids[missing[0]]
            raise FtprepError(f"--against {self.folder} has no row for id {first!r} of {scored} ({len(missing)} rows "
                              "without a match): score the same input with both models")
        per_shard = np.split(rows, np.cumsum([table.num_rows for table in shards])[:-1])
        for table, shard_rows in zip(shards, per_shard):
            self._check_same_tokens(scored, table, shard_rows)
        return per_shard

    def logprobs_for(self, rows: np.ndarray) -> pa.ChunkedArray:
        return self.table.column("logprobs").take(pa.array(rows))

    def _check_same_tokens(self, scored: Path, table: pa.Table, rows: np.ndarray) -> None:
        matched = self.table.take(pa.array(rows))
        same_length = pc.equal(pc.list_value_length(table.column("input_ids")),
                               pc.list_value_length(matched.column("input_ids"))).to_numpy(zero_copy_only=False)
        if not same_length.all():
            self._mismatch(table, int(np.flatnonzero(~same_length)[0]), f"other input_ids in {self.folder} than in {scored}")
        # Equal lengths: the flat token arrays line up row for row.
        row_of_token = np.repeat(np.arange(table.num_rows), np.diff(row_offsets(table)))
        differs = flat_values(table, "input_ids") != flat_values(matched, "input_ids")
        if differs.any():
            self._mismatch(table, int(row_of_token[differs][0]), f"other input_ids in {self.folder} than in {scored}")
        scored_here = flat_values(table, "assistant_mask").astype(bool) & ~np.isnan(flat_values(table, "logprobs"))
        unscored_there = scored_here & np.isnan(flat_values(matched, "logprobs"))
        if unscored_there.any():
            self._mismatch(table, int(row_of_token[unscored_there][0]), f"assistant tokens that {self.folder} did not score")

    def _mismatch(self, table: pa.Table, row: int, what: str) -> None:
        identifier = table.column("id")[row].as_py()
        raise FtprepError(f"--against: row id {identifier!r} has {what}: score the same input with the same tokenizer "
                          "and settings (--train-on, --max-length) under both models")
