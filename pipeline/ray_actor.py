"""One Ray actor of `--engine ray`: the local engine's stages on a batch of manifest rows.

A Captioner runs CaptionJob (image loading, request, retries, response parsing, classification) on an
event loop of its own, with `per_actor` requests in flight shared by the batches it works on at once
(Ray calls it from several threads), and answers one JSON output row per input row it started: an
error is a row, never a failed task. Rows it did not start (the run is stopping: a signal, --max-cost,
a run-ending error anywhere in the cluster) are left out; the next run does them.
Limits and the stop come from the run's LimitKeeper (ray_limits).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from typing import Any, Iterable, Iterator

import pyarrow as pa

from .config import JobConfig
from .cost import worst_case_cost
from .errors import RunAborted
from .records import ManifestRow

# The rows of the batch a coroutine works for: batches run at once on one loop and one CaptionJob.
_batch_rows: contextvars.ContextVar[list[dict[str, Any]]] = contextvars.ContextVar("batch_rows")


def manifest_items(rows: Iterable[ManifestRow]) -> Iterator[dict[str, Any]]:
    """Rows as Ray items; passthrough columns as JSON text, so that blocks keep one schema."""
    for row in rows:
        yield {"line": row.line, "id": row.id, "image": row.image, "source": row.source, "prompt": row.prompt,
               "problem": row.problem, "extra": json.dumps(row.extra, ensure_ascii=False, default=str), "task": row.task or ""}


class _Collector:
    """Stands in for the ResultWriter inside an actor: each row goes to the batch it belongs to."""

    def write(self, row: dict[str, Any]) -> None:
        _batch_rows.get().append(row)


class Captioner:
    """A Ray Data callable class: one event loop, session and client per actor, reused for every batch."""

    def __init__(self, config: JobConfig, per_actor: int, keeper: Any):
        self.config, self.per_actor, self.keeper = config, per_actor, keeper
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="captioner", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self) -> None:
        import aiohttp

        from .client import ChatClient
        from .images import ImageLoader
        from .job import CaptionJob
        from .pool import StopRequest
        from .progress import Progress
        from .providers import accepted_image_formats
        from .ray_limits import BudgetShare, SharedLimiter
        from .storage import Storage

        config = self.config
        self.gate = asyncio.Semaphore(self.per_actor)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.per_actor))
        import ray

        holder = ray.get_runtime_context().get_actor_id() or "driver"  # the same after Ray restarts the actor
        await self.keeper.forget.remote(holder)
        self.limiter = SharedLimiter(self.keeper, holder)
        client = ChatClient(self.session, config.base_url, config.api_key, config.timeout, stall_timeout=config.stall_timeout,
                            extra_headers=config.extra_headers, limiter=self.limiter, answer_tokens=config.max_tokens)
        self.store = Storage(config.storage, threads=self.per_actor)
        images = ImageLoader(max_side=config.max_image_side, max_bytes=config.max_image_bytes, store=self.store,
                             accepted=accepted_image_formats(config.image_formats, config.base_url, config.model))
        self.job = CaptionJob(config, images, client, _Collector(), Progress(None, interactive=False), StopRequest())
        self.budget = BudgetShare(self.keeper, self.job.budget, self.per_actor) if config.max_cost is not None else None

    def __call__(self, batch: pa.Table) -> dict[str, list[str]]:
        # An image's tasks may go to different actors: each row reads its image (share 1), none waits for another's read.
        rows = [ManifestRow(r["line"], r["id"], r["image"], r["source"], r["prompt"], json.loads(r["extra"] or "{}"), r["problem"],
                            task=r.get("task") or None) for r in batch.to_pylist()]
        done = asyncio.run_coroutine_threadsafe(self._batch(rows), self.loop).result()
        return {"row": [json.dumps(r, ensure_ascii=False, default=str) for r in done]}

    async def _batch(self, rows: list[ManifestRow]) -> list[dict[str, Any]]:
        done: list[dict[str, Any]] = []
        _batch_rows.set(done)  # this task's context; the row tasks below copy it
        await asyncio.gather(*(self._row(row) for row in rows))
        if self.budget is not None:
            await self.budget.give_back()
        await self.limiter.close()
        return done

    async def _row(self, row: ManifestRow) -> None:
        async with self.gate:
            if self.limiter.stopped or self.job.stop.reason:
                return  # not started: the next run does it
            try:
                ready = await self.job.prepare(row)
                if ready is None:
                    return
                if self.budget is not None:
                    await self.budget.ensure(worst_case_cost(self.job.price, ready.tokens, self.config.max_tokens))
                await self.job.send(ready)
            except RunAborted as e:  # the row is written; the whole cluster stops taking rows
                self.limiter.stopped = True
                await self.keeper.stop.remote("aborted", str(e))
            if self.job.stop.reason == "max-cost":
                self.limiter.stopped = True
                await self.keeper.stop.remote("max-cost", self.job.refused)
