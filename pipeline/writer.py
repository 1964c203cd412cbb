"""The result writer: every finished row is journaled at once, and the Parquet output is replaced atomically.

While the job runs, each row is appended to `<output>.journal.jsonl` and handed
to the OS straight away (a killed process loses nothing it had finished), with
an fsync at least every `sync_seconds` or `sync_rows` rows (a power cut loses
at most that). `close()` merges the journal into the output (merge.py): a reader sees the
previous complete table or the new one, never half a file.

A journal left by a killed run is merged the same way by the next `open()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import write_error
from .files import is_dataset, journal_path, temporary_path
from .merge import anchor, merge_journal

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger("pipeline")


class ResultWriter:
    def __init__(self, output: Path, *, sync_seconds: float = 2.0, sync_rows: int = 500, columns: "pa.Schema | None" = None):
        self.output = output
        self.columns = columns  # the structured answer's column types (--schema)
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
            folder = self.output if is_dataset(self.output) else self.output.parent
            folder.mkdir(parents=True, exist_ok=True)
            # A merge or a part killed before its rename (in a dataset folder, every hidden temporary is ours).
            for leftover in folder.glob(".*.tmp" if is_dataset(self.output) else f".{self.output.name}.*.tmp"):
                leftover.unlink(missing_ok=True)
            if self.journal.exists():
                self.rows_recovered = merge_journal(self.output, self.journal, self.columns)
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
            merge_journal(self.output, self.journal, self.columns)
        except OSError as e:
            raise write_error(getattr(e, "filename", None) or self.output, e, "merge the journal into") from None
        if error is not None:
            raise error


def _probe_free_space(output: Path, size: int = 256 * 1024) -> None:
    """Write, fsync and remove a small file beside the output: a full disk or a read-only folder shows before any request."""
    probe = temporary_path(anchor(output), ".probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


