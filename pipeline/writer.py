"""The result writer: every finished row is journaled at once, and the Parquet output is written atomically.

While the job runs, each row is appended to `<output>.journal.jsonl` and handed
to the OS straight away (a killed process loses nothing it had finished), with
an fsync at least every `sync_seconds` or `sync_rows` rows. `close()` turns the
journal into the Parquet output through a temporary file, fsync and rename, so a
reader sees either the previous complete table or the new one, never half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .results import OUTPUT_SCHEMA


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

    def open(self) -> "ResultWriter":
        self.output.parent.mkdir(parents=True, exist_ok=True)
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
        if self._file is None:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._unsynced = 0
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Write the Parquet output from the journal, then drop the journal."""
        if self._file is None:
            return
        self.sync()
        self._file.close()
        self._file = None
        write_parquet_atomically(self.output, read_journal(self.journal))
        self.journal.unlink()


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


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Our columns with their fixed types, then the manifest's passthrough columns as inferred."""
    rows = list(rows)
    columns: dict[str, pa.Array] = {}
    for field in OUTPUT_SCHEMA:
        columns[field.name] = pa.array([r.get(field.name) for r in rows], type=field.type)
    extra_names: dict[str, None] = {}
    for r in rows:
        extra_names.update(dict.fromkeys(k for k in r if k not in columns))
    for name in extra_names:
        values = [r.get(name) for r in rows]
        try:
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            # Mixed types in one manifest column: keep every value, as text.
            columns[name] = pa.array([None if v is None else _as_text(v) for v in values], type=pa.string())
    return pa.table(columns)


def write_parquet_atomically(output: Path, rows: Iterable[dict[str, Any]]) -> None:
    table = rows_to_table(rows)
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, temporary, compression="zstd")
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(output.parent)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
