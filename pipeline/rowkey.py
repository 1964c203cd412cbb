"""Which output row is which: one per manifest id, or one per (id, task) when the job file declares tasks.

Every place where the newest row wins (merging a journal, reading a dataset's parts, resume, a batch's
collection) keys rows with these two functions, so a row without a task keeps the meaning it always had.
"""

from __future__ import annotations

from typing import Any, Mapping

import pyarrow as pa

SEPARATOR = "\x1f"  # ASCII unit separator: in no id a manifest reader would make, and not in a task name


def key(row_id: str, task: str | None) -> str:
    return row_id if task is None else row_id + SEPARATOR + task


def row_key(row: Mapping[str, Any]) -> str:
    """The key of an output row as a dict (a journal line)."""
    return key(row["id"], row.get("task"))


def row_keys(table: pa.Table | pa.RecordBatch) -> pa.Array:
    """The key of every row of a table, as one string array (the id column itself when no row has a task)."""
    ids = _combined(table.column("id"))
    if "task" not in table.schema.names:
        return ids
    tasks = _combined(table.column("task"))
    if tasks.null_count == len(tasks):
        return ids
    import pyarrow.compute as pc

    return pc.coalesce(pc.binary_join_element_wise(ids, tasks.cast(pa.string()), SEPARATOR), ids)


def _combined(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
