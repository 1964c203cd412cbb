"""The record of provider batch jobs beside an output: which rows went into which batch, and how far each got.

The folder `<output>.batches/` (in a dataset folder: `_batches/`) holds
  ledger.jsonl           one event per line, fsynced before the step after it is taken:
                           prepared  {key, api, rows, bytes, worst_usd, at, model}   (its rows file is durable first)
                           uploaded  {key, file_id}       submitted {key, batch_id}
                           ended     {key, status, output_file_id, error_file_id, note}
                           collecting {key}   collected {key, written, again}   rejected {key, why}
  <key>.rows.jsonl       the batch's rows: what an output row needs besides the answer
  <key>.requests.jsonl   the lines to upload; deleted once the provider holds the batch
A batch is live from `prepared` until `collected` or `rejected`, and its ids are not prepared again while
it is. Whatever a kill interrupts is found again from these files: a batch prepared but not known to be
submitted is looked up at the provider by its key before it is submitted (backend.py).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import write_error
from ..files import batches_path, fsync_directory
from ..hashedset import HashedSet
from ..rowkey import key

LEDGER = "ledger.jsonl"


@dataclass
class Batch:
    key: str
    api: str  # "openai", "anthropic", or "file" (pipeline batch export: no provider)
    rows: int
    bytes: int
    worst_usd: float  # the most its rows can cost: --max-cost counts it as in flight until it is collected
    at: float  # when it was prepared (epoch seconds)
    model: str | None = None  # what its requests ask (an import prices the answers by it)
    answers: dict[str, Any] | None = None  # the schema, schema_mode and tasks its answers are read with (packer.answer_settings)
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's last word on it
    output_file_id: str | None = None
    error_file_id: str | None = None
    done: bool = False  # collected or rejected
    collecting: bool = False  # its rows were being written when a run stopped: some may be in the output already
    note: str | None = None

    @property
    def submitted(self) -> bool:
        return self.batch_id is not None


class Ledger:
    def __init__(self, output: Path):
        self.folder = batches_path(output)
        self.batches: dict[str, Batch] = {}

    @classmethod
    def open(cls, output: Path) -> "Ledger":
        """Read what earlier runs recorded (nothing is created until a batch is)."""
        ledger = cls(output)
        path = ledger.folder / LEDGER
        if path.exists():
            for raw in path.read_bytes().splitlines():
                try:
                    ledger._apply(json.loads(raw))
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill: only the last can be, and its step was not taken
        return ledger

    def live(self) -> list[Batch]:
        return [b for b in self.batches.values() if not b.done]

    def new_key(self) -> str:
        return f"b{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"

    def rows_path(self, key: str) -> Path:
        return self.folder / f"{key}.rows.jsonl"

    def requests_path(self, key: str) -> Path:
        return self.folder / f"{key}.requests.jsonl"

    def results_path(self, key: str, which: str) -> Path:
        return self.folder / f"{key}.{which}.jsonl"

    def record(self, event: str, key: str, **fields: Any) -> None:
        """Append one event and fsync it: once this returns, a rerun knows."""
        entry = {"event": event, "key": key, "time": round(time.time(), 3), **fields}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with open(self.folder / LEDGER, "ab") as f:
                f.write(json.dumps(entry, ensure_ascii=False).encode() + b"\n")
                f.flush()
                os.fsync(f.fileno())
            if event == "prepared":
                fsync_directory(self.folder)
        except OSError as e:
            raise write_error(self.folder / LEDGER, e) from None
        self._apply(entry)

    def pending_ids(self) -> HashedSet:
        """The row keys (rowkey.py) in live provider batches: never prepared again while their batch may still be answered.

        (An export's rows are not: nobody may ever run them.)"""
        live = [b for b in self.live() if b.api != "file"]
        ids = HashedSet(sum(b.rows for b in live))
        for batch in live:
            ids.update(key(row["id"], row.get("task")) for row in self.read_rows(batch.key))
        return ids

    def read_rows(self, key: str) -> Iterator[dict[str, Any]]:
        path = self.rows_path(key)
        if not path.exists():
            return
        with path.open("rb") as f:
            for raw in f:
                if raw.strip():
                    yield json.loads(raw)

    def remove_files(self, key: str, *names: str) -> None:
        for name in names:
            (self.folder / f"{key}.{name}.jsonl").unlink(missing_ok=True)

    def remove_orphans(self) -> None:
        """Files of a batch a kill stopped before it was recorded as prepared: nothing refers to them."""
        if not self.folder.exists():
            return
        for path in self.folder.glob("*.jsonl"):
            key = path.name.split(".", 1)[0]
            if path.name != LEDGER and key not in self.batches:
                path.unlink(missing_ok=True)

    def _apply(self, entry: dict[str, Any]) -> None:
        event, key = entry["event"], entry["key"]
        if event == "prepared":
            self.batches[key] = Batch(key, entry["api"], entry["rows"], entry["bytes"], entry.get("worst_usd", 0.0), entry["at"],
                                      entry.get("model"), answers=entry.get("answers"))
            return
        batch = self.batches[key]
        if event == "uploaded":
            batch.file_id = entry["file_id"]
        elif event == "submitted":
            batch.batch_id = entry["batch_id"]
        elif event == "ended":
            batch.status = entry["status"]
            batch.output_file_id = entry.get("output_file_id")
            batch.error_file_id = entry.get("error_file_id")
            batch.note = entry.get("note")
        elif event == "collecting":
            batch.collecting = True
        elif event in ("collected", "rejected"):
            batch.done = True
            batch.note = entry.get("why") or batch.note
            batch.status = batch.status or event

