"""`pipeline export OUTPUT --format csv|jsonl|parquet [-o FILE] [--wide]`: the output's rows, a batch at a time.

`--wide` pivots an output with tasks to one row per image (wide.py).

To a file, the export is written under a temporary name and renamed at the end: a reader never sees half of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterable, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from .storage import location
from .errors import EXIT_IO, EXIT_USAGE, ConfigError
from .files import temporary_path
from .outputs import Output
from .wide import wide_table


def export(output: Path, fmt: str, target: IO[bytes], columns: list[str] | None = None, wide: bool = False) -> int:
    """Write the rows of `output` to `target`; returns how many."""
    out = Output(output)
    table = wide_table(out) if wide else None
    schema = table.schema if table is not None else out.schema
    unknown = [c for c in columns or () if c not in schema.names]
    if unknown:
        raise ConfigError(f"{output} has no column {', '.join(unknown)}{' in its wide form' if wide else ''}; "
                          f"its columns: {', '.join(schema.names)}")
    if columns is not None:
        schema = pa.schema([f for f in schema if f.name in columns])
    if table is not None:
        batches = table.select(schema.names).to_batches()
    else:
        batches = out.batches(columns)
    if fmt == "parquet":
        return _parquet(batches, schema, target)
    rows = 0
    writer = None
    for batch in batches:
        rows += batch.num_rows
        if fmt == "jsonl":
            target.write("".join(json.dumps(r, ensure_ascii=False, default=_json_value) + "\n" for r in batch.to_pylist()).encode())
            continue
        batch = _csv_ready(batch)
        if writer is None:
            writer = pacsv.CSVWriter(target, batch.schema)
        writer.write_batch(batch)
    if fmt == "csv" and writer is None:  # no rows: still the header
        writer = pacsv.CSVWriter(target, _csv_ready(pa.RecordBatch.from_pylist([], schema)).schema)
    if writer is not None:
        writer.close()
    return rows


def _parquet(batches: Iterable[pa.RecordBatch], schema: pa.Schema, target: IO[bytes]) -> int:
    rows = 0
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _json_value(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)  # completed_at as ISO 8601


def _csv_ready(batch: pa.RecordBatch) -> pa.RecordBatch:
    """CSV has no lists or structs: such columns (passthrough ones) go out as JSON text."""
    columns = []
    for column in batch.columns:
        if pa.types.is_nested(column.type):
            column = pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in column.to_pylist()], pa.string())
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


@contextmanager
def _destination(path: Path | None) -> Iterator[IO[bytes]]:
    if path is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as f:
            yield f
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipeline export", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=location, help="the output a caption run wrote (.parquet)")
    parser.add_argument("--format", choices=("csv", "jsonl", "parquet"), required=True,
                        help="csv (nested columns as JSON text), jsonl, or parquet (one file, typed as the output)")
    parser.add_argument("-o", "--to", type=Path, metavar="FILE", help="write here instead of standard output")
    parser.add_argument("--columns", metavar="A,B", help="only these columns, e.g. id,caption")
    parser.add_argument("--wide", action="store_true", help="one row per image: each task's columns as <task>_<column>")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        with _destination(args.to) as target:
            rows = export(args.output, args.format, target, columns, wide=args.wide)
    except ConfigError as e:
        print(f"pipeline export: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `| head`: the reader had enough
        sys.stderr.close()
        return 0
    except OSError as e:
        print(f"pipeline export: error: cannot write {args.to or 'standard output'}: {e.strerror or e}", file=sys.stderr)
        return EXIT_IO
    if args.to:
        print(f"exported {rows:,} rows to {args.to}", file=sys.stderr)
    return 0
