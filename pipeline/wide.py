"""`pipeline export OUT --wide`: an output with tasks pivoted to one row per image.

The image's own columns come once (the id, the image, its size and hash, and every manifest column whose
value is the same in all of the image's rows); each task's other columns follow as `<task>_<column>`,
leaving out those that are null in every one of that task's rows (another task's schema columns). Rows
of a job without tasks (task null) keep their column names. The output is read whole: a wide table needs
every task of an image side by side.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from .outputs import Output
from .results import OUTPUT_COLUMNS

IMAGE_COLUMNS = ("id", "image", "image_sha256", "width", "height", "original_width", "original_height", "file_size", "file_mtime_ns")


def wide_table(output: Output) -> pa.Table:
    table = pa.Table.from_batches(list(output.batches()), schema=output.schema)
    if "task" not in table.column_names:
        return table
    ids = table.column("id").to_pylist()
    tasks = table.column("task").to_pylist()
    order: dict[str, int] = {}  # id -> its row in the wide table, in the order ids first appear
    first: list[int] = []  # the first output row of each image
    for i, row_id in enumerate(ids):
        if row_id not in order:
            order[row_id] = len(first)
            first.append(i)
    shared = [name for name in table.column_names
              if name in IMAGE_COLUMNS or (name not in OUTPUT_COLUMNS and _same_for_each_image(table.column(name), ids))]
    per_task = [name for name in table.column_names if name not in shared and name != "task"]
    columns: dict[str, pa.ChunkedArray | pa.Array] = {name: table.column(name).take(first) for name in shared}
    at: dict[str | None, list[int | None]] = {}  # per task, each image's row for it (None: the image has none)
    for i, (row_id, task) in enumerate(zip(ids, tasks)):
        at.setdefault(task, [None] * len(first))[order[row_id]] = i
    for task in sorted(t for t in at if t is not None) + ([None] if None in at else []):
        positions = pa.array(at[task], pa.int64())
        for name in per_task:
            column = table.column(name).take(positions)
            if column.null_count < len(column):
                columns[name if task is None else f"{task}_{name}"] = column
    return pa.table(columns)


def _same_for_each_image(column: pa.ChunkedArray, ids: list[str]) -> bool:
    """A manifest column holds one value per image however many tasks it has (an answer's column does not)."""
    seen: dict[str, Any] = {}
    for row_id, value in zip(ids, column.to_pylist()):
        value = json.dumps(value, sort_keys=True, default=str)
        if seen.setdefault(row_id, value) != value:
            return False
    return True
