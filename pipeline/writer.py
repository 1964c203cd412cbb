"""The result writer: every finished row is journaled at once, and the Parquet output is replaced atomically.

While the job runs, each row is appended to `<output>.journal.jsonl` and handed
to the OS straight away (a killed process loses nothing it had finished), with
an fsync at least every `sync_seconds` or `sync_rows` rows (a power cut loses
at most that). `close()` merges the journal into the Parquet output: the old
output's rows stream through, replaced by newer rows with the same id, into a
temporary file that is fsynced and renamed over the output. A reader sees the
previous complete table or the new one, never half a file.

A journal left by a killed run is merged the same way by the next `open()`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError
from .results import OUTPUT_SCHEMA

log = logging.getLogger("pipeline")


def journal_path(output: Path) -> Path:
    return output.with_name(output.name + ".journal.jsonl")


class ResultWriter:
    def __init__(self, output: Path, *, sync_seconds: float = 2.0, sync_rows: int = 500):
        self.output = output
        self.journal = journal_path(output)
        self._sync_seconds = sync_seconds
        self._sync_rows = sync_rows
        self._file = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.rows_written = 0
        self.rows_recovered = 0

    def open(self) -> "ResultWriter":
        """Recover what a killed run left, then start an empty journal. Call only while holding the output's lock."""
        self.output.parent.mkdir(parents=True, exist_ok=True)
        for leftover in self.output.parent.glob(f".{self.output.name}.*.tmp"):
            leftover.unlink(missing_ok=True)  # a merge that was killed before its rename
        if self.journal.exists():
            self.rows_recovered = merge_journal(self.output, self.journal)
            if self.rows_recovered:
                log.info("recovered %d finished rows from an interrupted run into %s", self.rows_recovered, self.output)
        self._file = open(self.journal, "w", encoding="utf-8")
        return self

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        self.rows_written += 1
        self._unsynced += 1
        if self._unsynced >= self._sync_rows or time.monotonic() - self._last_sync >= self._sync_seconds:
            self.sync()

    def sync(self) -> None:
        if self._file is None or not self._unsynced:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Merge this run's rows into the Parquet output, then drop the journal."""
        if self._file is None:
            return
        self.sync()
        self._file.close()
        self._file = None
        merge_journal(self.output, self.journal)


def merge_journal(output: Path, journal: Path) -> int:
    """Fold a journal into the output (newest row per id wins) and delete it; returns the rows merged."""
    rows = list(read_journal(journal))
    if rows:
        merge_into_output(output, rows_to_table(rows))
    journal.unlink()
    return len(rows)


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


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Our columns with their fixed types, then the manifest's passthrough columns as inferred; the last row per id wins."""
    latest = list({r["id"]: r for r in rows}.values())
    columns: dict[str, pa.Array] = {}
    for field in OUTPUT_SCHEMA:
        columns[field.name] = pa.array([r.get(field.name) for r in latest], type=field.type)
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


def merge_into_output(output: Path, new: pa.Table) -> None:
    """Write old rows (minus the ids in `new`) and then `new` to a temporary file, and rename it over the output."""
    try:
        old = pq.ParquetFile(output) if output.exists() else None
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"{output} exists but cannot be read as our Parquet output ({e}); move it away or pick another --output") from None
    schema = _unified_schema(old.schema_arrow if old else None, new.schema)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with pq.ParquetWriter(temporary, schema, compression="zstd") as parquet:
            if old is not None:
                replaced = new.column("id")
                for batch in old.iter_batches(batch_size=65_536):
                    kept = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=replaced)))
                    if kept.num_rows:
                        parquet.write_table(_conform(pa.Table.from_batches([kept]), schema))
            parquet.write_table(_conform(new, schema))
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(output.parent)


def _unified_schema(old: pa.Schema | None, new: pa.Schema) -> pa.Schema:
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


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
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


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
