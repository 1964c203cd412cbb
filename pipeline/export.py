"""`pipeline export OUTPUT --format csv|jsonl [-o FILE]`: the output's rows as CSV or JSON lines, a batch at a time.

To a file, the export is written under a temporary name and renamed at the end: a reader never sees half of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.csv as pacsv

from .storage import location
from .errors import EXIT_IO, EXIT_USAGE, ConfigError
from .files import temporary_path
from .outputs import Output


def export(output: Path, fmt: str, target: IO[bytes], columns: list[str] | None = None) -> int:
    """Write the rows of `output` to `target`; returns how many."""
    out = Output(output)
    unknown = [c for c in columns or () if c not in out.schema.names]
    if unknown:
        raise ConfigError(f"{output} has no column {', '.join(unknown)}; its columns: {', '.join(out.schema.names)}")
    rows = 0
    writer = None
    for batch in out.batches(columns):
        rows += batch.num_rows
        if fmt == "jsonl":
            target.write("".join(json.dumps(r, ensure_ascii=False, default=_json_value) + "\n" for r in batch.to_pylist()).encode())
            continue
        batch = _csv_ready(batch)
        if writer is None:
            writer = pacsv.CSVWriter(target, batch.schema)
        writer.write_batch(batch)
    if fmt == "csv" and writer is None:  # no rows: still the header
        schema = out.schema if columns is None else pa.schema([f for f in out.schema if f.name in columns])
        writer = pacsv.CSVWriter(target, _csv_ready(pa.RecordBatch.from_pylist([], schema)).schema)
    if writer is not None:
        writer.close()
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
    parser.add_argument("--format", choices=("csv", "jsonl"), required=True, help="csv (nested columns as JSON text) or jsonl")
    parser.add_argument("-o", "--to", type=Path, metavar="FILE", help="write here instead of standard output")
    parser.add_argument("--columns", metavar="A,B", help="only these columns, e.g. id,caption")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        with _destination(args.to) as target:
            rows = export(args.output, args.format, target, columns)
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
