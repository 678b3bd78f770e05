"""What the stages share over Arrow tables: the sink of rejected rows, and numpy views of list
columns (flat values, row offsets, nested top-k lists) and of per-token perplexity."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


class Rejects:
    """Where stages put the rows they drop: each with its source index, id, stage and reason.
    `kind` groups reasons in stats (default: the reason up to its first colon or parenthesis)."""

    def __init__(self):
        self._entries: list[tuple[dict, str]] = []

    def add(self, index: int, row_id: str, stage: str, reason: str, kind: str | None = None) -> None:
        entry = {"index": int(index), "id": row_id, "stage": stage, "reason": reason}
        self._entries.append((entry, kind or reason.split(":")[0].split(" (")[0]))

    def __len__(self) -> int:
        return len(self._entries)

    def _in_order(self) -> list[tuple[dict, str]]:
        return sorted(self._entries, key=lambda entry: entry[0]["index"])

    def rows(self) -> list[dict]:
        """The rejects in source order."""
        return [entry for entry, _ in self._in_order()]

    def reasons(self) -> dict[str, int]:
        """How many rejects of each kind, in order of first appearance in the source."""
        counts: dict[str, int] = {}
        for _, kind in self._in_order():
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def flat_values(table: pa.Table, name: str) -> np.ndarray:
    """The values of a list<...> column, all rows concatenated, as one numpy array."""
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy()
    return column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]


def row_offsets(table: pa.Table, name: str = "input_ids") -> np.ndarray:
    """Where each row starts in the flat values of a list column, from 0 (slices included)."""
    offsets = table.column(name).combine_chunks().offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def perplexity(logprobs: np.ndarray) -> np.ndarray:
    """exp(-logprob) per token, in float64 (NaN stays NaN; huge values do not warn)."""
    with np.errstate(over="ignore"):
        return np.exp(-np.asarray(logprobs, dtype=np.float64))


def nested_list_array(offsets: np.ndarray, entry_of_token: np.ndarray, entries: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """A list<list<value_type>> column: row r holds tokens offsets[r]..offsets[r + 1], token t the
    K values entries[entry_of_token[t]], or an empty list where entry_of_token[t] is -1."""
    has = entry_of_token >= 0
    lengths = np.where(has, entries.shape[1], 0)
    inner_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.asarray(entries[entry_of_token[has]]).reshape(-1).astype(value_type.to_pandas_dtype())
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(values, value_type))
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets).astype(np.int32)), inner)


def nested_entries(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<list<...>> column whose non-empty lists all hold K values, as flat arrays: per token
    (all rows concatenated) the row of `entries` it holds, -1 for an empty list; and entries [n, K]."""
    column = table.column(name).combine_chunks()
    outer = column.offsets.to_numpy()
    inner = column.values
    inner_offsets = inner.offsets.to_numpy()[outer[0] : outer[-1] + 1]
    lengths = np.diff(inner_offsets)
    values = inner.values.to_numpy(zero_copy_only=False)[inner_offsets[0] : inner_offsets[-1]]
    width = int(lengths.max()) if len(lengths) else 0
    if np.any((lengths != 0) & (lengths != width)):
        raise ValueError(f"{name}: every non-empty list must hold the same number of values")
    has = lengths > 0
    entry_of_token = np.where(has, np.cumsum(has) - 1, -1)
    return entry_of_token, values.reshape(-1, width) if width else values.reshape(0, 0)
