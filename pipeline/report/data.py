"""What the review page shows of an output table: its rows, read once, and the summary figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import ConfigError
from pipeline.files import is_dataset
from pipeline.outputs import Output
from pipeline.report.errors import ReportError

HISTOGRAM_BINS = 24
# The row fields the page shows, in the order each row's JSON array holds them.
ROW_FIELDS = ("id", "image", "status", "caption", "error_type", "error", "prompt_tokens", "completion_tokens",
              "total_tokens", "cost_usd", "latency_ms", "attempts", "task")


def read_output(path: Path) -> pa.Table:
    if is_dataset(path):  # a folder of parts: the newest row per id, as the next run sees it
        if not path.is_dir():
            raise ReportError(f"{path}: no such dataset output (pass the folder or the Parquet file a caption run wrote)")
        try:
            output = Output(path)
            table = pa.Table.from_batches(list(output.batches()), schema=output.schema)
        except ConfigError as e:
            raise ReportError(str(e)) from e
    elif not path.is_file():
        raise ReportError(f"{path}: no such file (pass the Parquet file a caption run wrote)")
    else:
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowException) as e:
            raise ReportError(f"{path}: not a readable Parquet file ({e})") from e
    missing = {"id", "status"} - set(table.column_names)
    if missing:
        raise ReportError(f"{path}: not a caption output (no {', '.join(sorted(missing))} column)")
    return _tasks_together(table)


def _tasks_together(table: pa.Table) -> pa.Table:
    """A job with tasks: each image's rows next to each other (images in the order they first come, tasks by name)."""
    if "task" not in table.column_names or table.column("task").null_count == table.num_rows:
        return table
    first: dict[str, int] = {}
    ids, tasks = table.column("id").to_pylist(), table.column("task").to_pylist()
    for i, row_id in enumerate(ids):
        first.setdefault(row_id, i)
    order = sorted(range(len(ids)), key=lambda i: (first[ids[i]], tasks[i] or ""))
    return table.take(pa.array(order, pa.int64()))


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts, sums, latency percentiles and histogram, error types: everything the page's top shows."""
    status = table["status"]
    is_error = pc.fill_null(pc.equal(status, "error"), False)
    summary: dict[str, Any] = {
        "rows": table.num_rows,
        "ok": _count(pc.equal(status, "ok")),
        "error": _count(is_error),
        "tokens": {name: _sum(table, name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
        # No prices (an older output, or a model missing from the prices file): no cost column at all.
        "cost_usd": _sum(table, "cost_usd") if "cost_usd" in table.column_names and table.column("cost_usd").null_count < table.num_rows else None,
        "models": _top_values(table, "model", 3),
    }
    error_types = pc.fill_null(pc.filter(_column(table, "error_type"), is_error), "unknown")
    summary["error_types"] = sorted(((d["values"], d["counts"]) for d in pc.value_counts(error_types).to_pylist()),
                                    key=lambda tc: (-tc[1], tc[0]))
    summary["latency"] = _latency(_column(table, "latency_ms"))
    return summary


def _latency(latency: pa.ChunkedArray) -> dict[str, Any] | None:
    latency = pc.cast(pc.drop_null(latency), pa.float64())
    latency = pc.filter(latency, pc.is_finite(latency))
    if len(latency) == 0:
        return None
    p50, p90, p99 = pc.quantile(latency, q=[0.5, 0.9, 0.99]).to_pylist()
    top = pc.max(latency).as_py()
    # A few timeouts would squash every other bar into the first one: stop the axis at p99 then.
    high = top if top <= 1.5 * p99 or p99 == 0 else p99
    width = (high / HISTOGRAM_BINS) or 1.0
    bins = pc.min_element_wise(pc.cast(pc.floor(pc.divide(latency, width)), pa.int64()), HISTOGRAM_BINS - 1)
    counts = [0] * HISTOGRAM_BINS
    for d in pc.value_counts(bins).to_pylist():
        counts[d["values"]] = d["counts"]
    return {"p50": p50, "p90": p90, "p99": p99, "max": top, "high": high, "bins": counts,
            "beyond": _count(pc.greater(latency, high)), "n": len(latency)}


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return table[name]
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def _count(mask: pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def _sum(table: pa.Table, name: str) -> int | float:
    if name not in table.column_names:
        return 0
    return pc.sum(table[name]).as_py() or 0


def _top_values(table: pa.Table, name: str, n: int) -> list[str]:
    if name not in table.column_names:
        return []
    counts = pc.value_counts(pc.drop_null(table[name])).to_pylist()
    return [d["values"] for d in sorted(counts, key=lambda d: -d["counts"])[:n]]
