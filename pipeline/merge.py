"""Folding a journal into the output: the newest row per id (per id and task: rowkey.py) wins, and a reader never sees half a file.

A single-file output is rewritten: its rows stream through, minus the ids the journal has newer rows
for, then the journal's rows, into a temporary file that is fsynced and renamed over it. A dataset
output (dataset.py) gets the journal's rows as one new part and nothing else is touched. The journal
is read a chunk at a time and spilled to temporary Arrow files, so a merge holds one chunk and the
run's ids, however many rows the run finished.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .files import fsync_directory, is_dataset, not_our_output, temporary_path
from .results import OUTPUT_SCHEMA
from .rowkey import row_key, row_keys

JOURNAL_CHUNK_ROWS = 10_000  # journal rows made into one table at a time; a merge's memory grows with this, not with the run
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def anchor(output: Path) -> Path:
    """What temporary names are made beside: the output file, or a name inside a dataset folder."""
    return output / "_scratch" if is_dataset(output) else output


def merge_journal(output: Path, journal: Path, columns: pa.Schema | None = None) -> int:
    """Fold a journal into the output (newest row per id wins) and delete it; returns the rows merged.

    `columns`: the types of the structured answer's columns (--schema); other extra columns are inferred."""
    spilled = SpilledJournal(output, columns)
    try:
        for rows in _chunks(read_journal(journal), JOURNAL_CHUNK_ROWS):
            spilled.add(rows)
        if spilled.rows and is_dataset(output):
            add_part(output, spilled)
        elif spilled.rows:
            merge_into_output(output, spilled)
    finally:
        spilled.remove()
    journal.unlink()
    return spilled.rows


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Rows from a journal; a last line cut short by a kill is ignored."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _chunks(rows: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


def rows_to_table(rows: list[dict[str, Any]], typed: pa.Schema | None = None) -> pa.Table:
    """Our columns with their fixed types, the answer's with theirs (`typed`), then the manifest's passthrough
    columns as inferred; the last row per id (per id and task, see rowkey.py) wins."""
    latest = list({row_key(r): r for r in rows}.values())
    columns: dict[str, pa.Array] = {}
    for field in OUTPUT_SCHEMA:
        columns[field.name] = pa.array([r.get(field.name) for r in latest], type=field.type)
    for field in typed or ():
        if any(field.name in r for r in latest):
            try:
                columns[field.name] = pa.array([r.get(field.name) for r in latest], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                pass  # a journal an earlier schema wrote: inferred below, like any other column
    extra_names: dict[str, None] = {}
    for r in latest:
        extra_names.update(dict.fromkeys(k for k in r if k not in columns))
    for name in extra_names:
        values = [r.get(name) for r in latest]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            # Mixed types in one manifest column: keep every value, as text.
            columns[name] = pa.array([None if v is None else _as_text(v) for v in values], type=pa.string())
    return pa.table(columns)


class SpilledJournal:
    """A journal's rows as one table per chunk in temporary Arrow files; only the row keys and the schemas stay in memory."""

    def __init__(self, output: Path, typed: pa.Schema | None = None):
        self._output = output
        self._typed = typed
        self._parts: list[Path] = []
        self._keys: list[pa.Array] = []  # rowkey.row_keys of each chunk
        self.schema: pa.Schema | None = None  # the chunks' schemas unified, as if the journal were one table
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        table = rows_to_table(rows, self._typed)
        # Named like the merge's temporary file, so that open() removes parts a killed merge left.
        part = temporary_path(anchor(self._output), f".journal{len(self._parts)}")
        self._parts.append(part)
        with pa.ipc.new_file(part, table.schema, options=_SPILL_OPTIONS) as spill:
            spill.write_table(table)
        self._keys.append(row_keys(table))
        self.schema = table.schema if self.schema is None else unified_schema(self.schema, table.schema)
        self.rows += len(rows)

    def newest_rows(self) -> tuple[pa.Array, Iterator[pa.Table]]:
        """The journal's distinct row keys, and its tables keeping only the newest row per key."""
        keys = pa.chunked_array(self._keys, pa.string())
        if len(self._parts) == 1:  # one chunk is one row per key already (rows_to_table): no compute kernels to load
            return keys.combine_chunks(), self._tables(None)
        import pyarrow.compute as pc  # only when there is something to compute (~45 ms to import)
        positions = pa.table({"key": keys, "position": pa.array(range(len(keys)), pa.int64())})
        # rows_to_table kept the last row per key within a chunk; across chunks the latest position wins.
        newest = positions.group_by("key", use_threads=False).aggregate([("position", "max")])
        is_newest = pc.is_in(positions.column("position"), value_set=newest.column("position_max").combine_chunks())
        return newest.column("key").combine_chunks(), self._tables(is_newest)

    def _tables(self, keep: pa.ChunkedArray | None) -> Iterator[pa.Table]:
        offset = 0
        for part in self._parts:
            with pa.OSFile(str(part)) as source:
                table = pa.ipc.open_file(source).read_all()
            yield table if keep is None else table.filter(keep.slice(offset, table.num_rows))
            offset += table.num_rows

    def remove(self) -> None:
        for part in self._parts:
            part.unlink(missing_ok=True)


def merge_into_output(output: Path, new: SpilledJournal) -> None:
    """Write old rows (minus the row keys in `new`) and then `new`'s newest rows to a temporary file, and rename it over the output."""
    try:
        old = pq.ParquetFile(output) if output.exists() else None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise not_our_output(output, e) from None
    schema = unified_schema(old.schema_arrow if old else None, new.schema)
    replaced, new_tables = new.newest_rows()
    temporary = temporary_path(output)
    try:
        with pq.ParquetWriter(temporary, schema, compression="zstd") as parquet:
            if old is not None:
                import pyarrow.compute as pc  # only when there are old rows to filter (~45 ms to import)
                for batch in old.iter_batches(batch_size=65_536):
                    kept = batch.filter(pc.invert(pc.is_in(row_keys(batch), value_set=replaced)))
                    if kept.num_rows:
                        parquet.write_table(conform(pa.Table.from_batches([kept]), schema))
            for table in new_tables:
                if table.num_rows:
                    parquet.write_table(conform(table, schema))
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(output.parent)


def add_part(output: Path, new: SpilledJournal) -> None:
    """A dataset output gets the journal's newest rows as one new part; no earlier part is read or rewritten.

    Its schema extends the last part's, so a column never disappears from one part to the next."""
    from .dataset import parts, write_part
    earlier = parts(output)
    schema = unified_schema(pq.read_schema(earlier[-1]) if earlier else None, new.schema)
    _, tables = new.newest_rows()
    write_part(output, (conform(t, schema) for t in tables), schema)


def unified_schema(old: pa.Schema | None, new: pa.Schema) -> pa.Schema:
    """Old columns in their order, then new ones; a column whose types cannot be reconciled becomes text."""
    fields = {f.name: f for f in (old or new)}
    for f in new:
        if f.name not in fields:
            fields[f.name] = f
        elif fields[f.name].type != f.type:
            try:
                fields[f.name] = pa.unify_schemas([pa.schema([fields[f.name]]), pa.schema([f])], promote_options="permissive").field(0)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                fields[f.name] = pa.field(f.name, pa.string())
    return pa.schema(list(fields.values()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                column = pa.array([None if v is None else _as_text(v) for v in column.to_pylist()], type=pa.string())
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)



def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
