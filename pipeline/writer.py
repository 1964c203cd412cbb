"""The result writer: every finished row is journaled at once, and the Parquet output is replaced atomically.

While the job runs, each row is appended to `<output>.journal.jsonl` and handed
to the OS straight away (a killed process loses nothing it had finished), with
an fsync at least every `sync_seconds` or `sync_rows` rows (a power cut loses
at most that). `close()` merges the journal into the Parquet output: the old
output's rows stream through, replaced by newer rows with the same id, into a
temporary file that is fsynced and renamed over the output. A reader sees the
previous complete table or the new one, never half a file. The journal is read
a chunk at a time and spilled to temporary Arrow files beside the output, so a
merge holds one chunk and the run's ids, however many rows the run finished.

A journal left by a killed run is merged the same way by the next `open()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import write_error
from .files import fsync_directory, journal_path, not_our_output, temporary_path
from .results import OUTPUT_SCHEMA

log = logging.getLogger("pipeline")

JOURNAL_CHUNK_ROWS = 10_000  # journal rows made into one table at a time; a merge's memory grows with this, not with the run
_SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class ResultWriter:
    def __init__(self, output: Path, *, sync_seconds: float = 2.0, sync_rows: int = 500):
        self.output = output
        self.journal = journal_path(output)
        self._sync_seconds = sync_seconds
        self._sync_rows = sync_rows
        self._file = None
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self.rows_recovered = 0
        self._broken = False
        self._flush_scheduled = False
        self._failed: Exception | None = None  # a write error found by a scheduled flush, raised by the next write

    def open(self) -> "ResultWriter":
        """Recover what a killed run left, check the folder takes writes, start an empty journal.

        Call only while holding the output's lock. Any failure to write is an OutputWriteError (exit 74)
        before the first request is sent.
        """
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            for leftover in self.output.parent.glob(f".{self.output.name}.*.tmp"):
                leftover.unlink(missing_ok=True)  # a merge that was killed before its rename
            if self.journal.exists():
                self.rows_recovered = merge_journal(self.output, self.journal)
                if self.rows_recovered:
                    log.info("recovered %d finished rows from an interrupted run into %s", self.rows_recovered, self.output)
            _probe_free_space(self.output)
            self._file = open(self.journal, "w", encoding="utf-8")
        except OSError as e:
            raise write_error(getattr(e, "filename", None) or self.output.parent, e) from None
        return self

    def write(self, row: dict[str, Any]) -> None:
        """Journal one finished row: it reaches the OS before anything else happens on the event loop.

        Rows finished in one turn of the loop go out in one write, at the start of the next turn, before
        any answer that arrived meanwhile is read (64 answers at once were 64 flushes, each waiting for
        the GIL). Without a running loop, at once.
        """
        if self._failed is not None:
            raise self._failed
        try:
            self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        except OSError as e:
            raise self._fail(e) from None
        self._unsynced += 1
        if self._flush_scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self._flush)
            self._flush_scheduled = True
        except RuntimeError:  # no loop: a notebook or a test writing rows by hand
            self._flush()
            if self._failed is not None:
                raise self._failed

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._file is None or self._failed is not None:
            return
        try:
            self._file.flush()
            if self._unsynced >= self._sync_rows or time.monotonic() - self._last_sync >= self._sync_seconds:
                self.sync()
        except OSError as e:
            self._fail(e)  # the next write (or close) raises it

    def _fail(self, error: OSError) -> Exception:
        self._broken = True  # what is buffered cannot be written: the rows before it are on disk
        self._failed = write_error(self.journal, error)
        return self._failed

    def sync(self) -> None:
        if self._file is None or not self._unsynced:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Merge this run's rows into the Parquet output, then drop the journal (kept if anything fails)."""
        if self._file is None:
            return
        file, self._file = self._file, None
        error = None
        try:
            if not self._broken:
                file.flush()
                os.fsync(file.fileno())
            file.close()
        except OSError as e:
            with contextlib.suppress(OSError):
                file.close()
            self._broken = True
            error = write_error(self.journal, e)
        error = error or self._failed
        try:
            merge_journal(self.output, self.journal)
        except OSError as e:
            raise write_error(getattr(e, "filename", None) or self.output, e, "merge the journal into") from None
        if error is not None:
            raise error


def _probe_free_space(output: Path, size: int = 256 * 1024) -> None:
    """Write, fsync and remove a small file beside the output: a full disk or a read-only folder shows before any request."""
    probe = temporary_path(output, ".probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def merge_journal(output: Path, journal: Path) -> int:
    """Fold a journal into the output (newest row per id wins) and delete it; returns the rows merged."""
    spilled = SpilledJournal(output)
    try:
        for rows in _chunks(read_journal(journal), JOURNAL_CHUNK_ROWS):
            spilled.add(rows)
        if spilled.rows:
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


class SpilledJournal:
    """A journal's rows as one table per chunk in temporary Arrow files; only the ids and the schemas stay in memory."""

    def __init__(self, output: Path):
        self._output = output
        self._parts: list[Path] = []
        self._ids: list[pa.Array] = []
        self.schema: pa.Schema | None = None  # the chunks' schemas unified, as if the journal were one table
        self.rows = 0

    def add(self, rows: list[dict[str, Any]]) -> None:
        table = rows_to_table(rows)
        # Named like the merge's temporary file, so that open() removes parts a killed merge left.
        part = temporary_path(self._output, f".journal{len(self._parts)}")
        self._parts.append(part)
        with pa.ipc.new_file(part, table.schema, options=_SPILL_OPTIONS) as spill:
            spill.write_table(table)
        self._ids.extend(table.column("id").chunks)
        self.schema = table.schema if self.schema is None else unified_schema(self.schema, table.schema)
        self.rows += len(rows)

    def newest_rows(self) -> tuple[pa.Array, Iterator[pa.Table]]:
        """The journal's distinct ids, and its tables keeping only the newest row per id."""
        import pyarrow.compute as pc  # only when an output is read: not at start-up (~40 ms)
        ids = pa.chunked_array(self._ids, pa.string())
        positions = pa.table({"id": ids, "position": pa.array(range(len(ids)), pa.int64())})
        # rows_to_table kept the last row per id within a chunk; across chunks the latest position wins.
        newest = positions.group_by("id", use_threads=False).aggregate([("position", "max")])
        is_newest = pc.is_in(positions.column("position"), value_set=newest.column("position_max").combine_chunks())
        return newest.column("id").combine_chunks(), self._tables(is_newest)

    def _tables(self, keep: pa.ChunkedArray) -> Iterator[pa.Table]:
        offset = 0
        for part in self._parts:
            with pa.OSFile(str(part)) as source:
                table = pa.ipc.open_file(source).read_all()
            yield table.filter(keep.slice(offset, table.num_rows))
            offset += table.num_rows

    def remove(self) -> None:
        for part in self._parts:
            part.unlink(missing_ok=True)


def merge_into_output(output: Path, new: SpilledJournal) -> None:
    """Write old rows (minus the ids in `new`) and then `new`'s newest rows to a temporary file, and rename it over the output."""
    import pyarrow.compute as pc  # only when an output is read: not at start-up (~40 ms)
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
                for batch in old.iter_batches(batch_size=65_536):
                    kept = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=replaced)))
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
