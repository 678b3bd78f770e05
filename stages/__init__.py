"""ftprep stages: each takes Arrow data in and gives Arrow data out; none reads files or prints."""

import numpy as np
import pyarrow as pa


def flat_values(table: pa.Table, name: str) -> np.ndarray:
    """The values of a list<...> column, all rows concatenated, as one numpy array."""
    column = table.column(name).combine_chunks()
    offsets = column.offsets.to_numpy()
    return column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
