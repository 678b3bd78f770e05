"""ftprep stages: each takes an Arrow table in and gives a table and its stats out; none reads
files, prints, loads a model or imports from the rest of ftprep.

Every stage is called as `stage(table, rejects) -> (table, stats)`. The table carries an
`index` column (each row's place in the source), by which a stage names the rows it drops in
`rejects`, a sink its caller provides.

The shared helpers (Rejects, flat_values, row_offsets, ...) live in ftprep.stages.arrays and are
named here on first use: importing ftprep.stages.errors, as the command line does at start-up,
then costs no numpy or pyarrow import.
"""

from __future__ import annotations

ARRAY_HELPERS = ("Rejects", "flat_values", "row_offsets", "perplexity", "nested_list_array", "nested_entries")
__all__ = list(ARRAY_HELPERS)


def __getattr__(name: str):
    if name in ARRAY_HELPERS:
        from ftprep.stages import arrays

        return getattr(arrays, name)
    raise AttributeError(f"module 'ftprep.stages' has no attribute {name!r}")
