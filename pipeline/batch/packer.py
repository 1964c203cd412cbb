"""Packing prepared rows into batch files: each within the provider's request and byte limits, durable before submit.

A batch being filled is two open files, its request lines and its rows; when the next line would not fit,
both are fsynced, the batch is recorded as prepared (ledger.py) and handed to `submit` in the background
while the next one fills. A batch that was still filling when the run ended is removed: its rows were
never recorded, so the next run prepares them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from dataclasses import asdict
from typing import IO, Any, Awaitable, Callable

from ..rowkey import key
from ..config import JobConfig
from ..job import ReadyRequest
from .ledger import Batch, Ledger


class _Filling:
    def __init__(self, ledger: Ledger):
        self.key = ledger.new_key()
        ledger.folder.mkdir(parents=True, exist_ok=True)
        self.requests: IO[bytes] = open(ledger.requests_path(self.key), "wb")
        self.rows: IO[bytes] = open(ledger.rows_path(self.key), "wb")
        self.count = 0
        self.bytes = 0
        self.worst = 0.0

    def seal(self) -> None:
        for f in (self.requests, self.rows):
            f.flush()
            os.fsync(f.fileno())
            f.close()


class Packer:
    def __init__(self, config: JobConfig, ledger: Ledger, submit: Callable[[Batch], Awaitable[None]] | None,
                 reserve: Callable[[ReadyRequest], float | None], api: str):
        """`api`: "openai", "anthropic", or "file" (an export: recorded, never submitted)."""
        self.config = config
        self.ledger = ledger
        self.submit = submit
        self.reserve = reserve
        self.api = api
        self._filling: _Filling | None = None
        self._submitting: list[asyncio.Task] = []

    async def add(self, ready: ReadyRequest) -> None:
        """Pack one prepared row (its body is the whole request line; see lines.py). No await: rows pack in order."""
        worst = self.reserve(ready)
        if worst is None:  # --max-cost: not packed, the next run takes it
            return
        line = ready.body
        filling = self._filling
        if filling is not None and (filling.count >= self.config.batch_max_requests
                                    or filling.bytes + len(line) > self.config.batch_max_bytes):
            self._seal()
        if self._filling is None:
            self._filling = _Filling(self.ledger)
        filling = self._filling
        filling.requests.write(line)
        filling.rows.write(_row_line(ready, custom_id(self.api, key(ready.row.id, ready.row.task))))
        filling.count += 1
        filling.bytes += len(line)
        filling.worst += worst

    async def close(self) -> None:
        """Seal the batch being filled, and wait until every batch is submitted."""
        self._seal()
        tasks, self._submitting = self._submitting, []
        for task in tasks:
            await task

    async def abandon(self) -> None:
        """After a failure: the batch being filled is dropped (never recorded), submissions under way are cancelled."""
        if self._filling is not None:
            filling, self._filling = self._filling, None
            filling.requests.close()
            filling.rows.close()
            self.ledger.remove_files(filling.key, "requests", "rows")
        for task in self._submitting:
            task.cancel()
        await asyncio.gather(*self._submitting, return_exceptions=True)

    def _seal(self) -> None:
        filling, self._filling = self._filling, None
        if filling is None or filling.count == 0:
            return
        filling.seal()
        self.ledger.record("prepared", filling.key, api=self.api, rows=filling.count, bytes=filling.bytes,
                           worst_usd=round(filling.worst, 9), at=round(time.time(), 3), model=self.config.model,
                           **({"answers": answers} if (answers := answer_settings(self.config)) else {}))
        if self.submit is not None:
            self._submitting.append(asyncio.create_task(self.submit(self.ledger.batches[filling.key])))


def answer_settings(config: JobConfig) -> dict[str, Any]:
    """What reading the answers takes (the schema, the tasks), kept with the batch: `pipeline batch import` has no job file."""
    if config.schema is None and not config.tasks:
        return {}
    return {"schema": config.schema, "schema_mode": config.schema_mode, "tasks": config.tasks}


def custom_id(api: str, row_key: str) -> str:
    """The row's key (rowkey.py: its id, or id and task) in OpenAI lines, readable in an export; a hash for
    Anthropic, whose ids allow only [A-Za-z0-9_-]."""
    if api != "anthropic":
        return row_key
    return "r" + hashlib.sha256(row_key.encode()).hexdigest()[:40]


def _row_line(ready: ReadyRequest, custom: str) -> bytes:
    row, image = ready.row, asdict(ready.image)
    image.pop("url")
    meta = {"c": custom, "id": row.id, "task": row.task, "image": row.image, "source": row.source, "line": row.line,
            "prompt": row.prompt, "extra": row.extra, "fp": ready.fingerprint, "tokens": ready.tokens, "img": image}
    return json.dumps(meta, ensure_ascii=False, default=str).encode() + b"\n"
