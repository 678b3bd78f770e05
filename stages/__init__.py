"""ftprep stages: each takes Arrow data in and gives Arrow data out; none reads files or prints."""

import numpy as np
import pyarrow as pa


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
