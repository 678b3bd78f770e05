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
