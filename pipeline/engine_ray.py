"""The same job on Ray Data (issue 15, first step): `--engine ray`, and `caption_dataset` for Ray pipelines.

Each Ray actor runs the local engine's own stages on a batch of manifest rows (CaptionJob: image loading,
request, retries, response parsing, classification) on an event loop of its own, with
`--concurrency / actors` requests in flight, and answers one output row per input row: an error is a
row, never a failed task. The driver (`run_on_ray`) hands Ray the rows left after resume and writes
what comes back through the same journal and writer as the local engine, so output, resume and exit
codes are the same. Not yet cluster-wide: --rpm/--tpm and --max-cost hold per actor.
Ray is imported only here, and this module only with `--engine ray`.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from typing import Any, Iterable, Iterator

import pyarrow as pa

from .config import JobConfig
from .errors import ConfigError, RunAborted
from .merge import rows_to_table
from .progress import Progress
from .records import ManifestRow

BATCH_ROWS = 64  # manifest rows per Ray batch: one actor works on a batch with all its requests in flight
# Error types after which the local engine stops the run (errors.RUN_ENDING_ERRORS): the driver stops too.
RUN_ENDING = {"auth_failed", "payment_required", "quota_exhausted", "rate_limited_long"}


def manifest_items(rows: Iterable[ManifestRow]) -> Iterator[dict[str, Any]]:
    """Rows as Ray items; passthrough columns as JSON text, so that blocks keep one schema."""
    for row in rows:
        yield {"line": row.line, "id": row.id, "image": row.image, "source": row.source, "prompt": row.prompt,
               "problem": row.problem, "extra": json.dumps(row.extra, ensure_ascii=False, default=str)}


class _Collector:
    """Stands in for the ResultWriter inside an actor: the rows of the batch being worked on."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


class Captioner:
    """A Ray Data callable class: one event loop, session and client per actor, reused for every batch."""

    def __init__(self, config: JobConfig, per_actor: int):
        self.config, self.per_actor = config, per_actor
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="captioner", daemon=True).start()
        self.job = asyncio.run_coroutine_threadsafe(self._open(), self.loop).result()

    async def _open(self):
        import aiohttp

        from .client import ChatClient
        from .images import ImageLoader
        from .job import CaptionJob
        from .pool import StopRequest
        from .providers import accepted_image_formats
        from .ratelimit import RateLimiter

        config = self.config
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=self.per_actor))
        client = ChatClient(self.session, config.base_url, config.api_key, config.timeout, stall_timeout=config.stall_timeout,
                            extra_headers=config.extra_headers, limiter=RateLimiter(rpm=_share(config.rpm, self), tpm=_share(config.tpm, self)),
                            answer_tokens=config.max_tokens)
        images = ImageLoader(max_side=config.max_image_side, max_bytes=config.max_image_bytes,
                             accepted=accepted_image_formats(config.image_formats, config.base_url, config.model))
        self.collector = _Collector()
        return CaptionJob(config, images, client, self.collector, Progress(None, interactive=False), StopRequest())

    def __call__(self, batch: pa.Table) -> dict[str, list[str]]:
        rows = [ManifestRow(r["line"], r["id"], r["image"], r["source"], r["prompt"], json.loads(r["extra"] or "{}"), r["problem"])
                for r in batch.to_pylist()]
        done = asyncio.run_coroutine_threadsafe(self._batch(rows), self.loop).result()
        return {"row": [json.dumps(r, ensure_ascii=False, default=str) for r in done]}

    async def _batch(self, rows: list[ManifestRow]) -> list[dict[str, Any]]:
        self.collector.rows = []
        gate = asyncio.Semaphore(self.per_actor)

        async def one(row: ManifestRow) -> None:
            async with gate:
                try:
                    ready = await self.job.prepare(row)
                    if ready is not None:
                        await self.job.send(ready)
                except RunAborted:
                    pass  # the row is written; the driver stops the run when it sees a run-ending error

        await asyncio.gather(*(one(row) for row in rows))
        return self.collector.rows


def _share(limit: int | None, captioner: Captioner) -> int | None:
    return None if limit is None else max(1, math.floor(limit * captioner.per_actor / max(captioner.config.concurrency, 1)))


def _actors(config: JobConfig) -> int:
    import ray
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, min(cpus, config.concurrency))


def caption_json(ds: Any, config: JobConfig) -> Any:
    """A Dataset of manifest items -> one of output rows as JSON text (column `row`), one per item."""
    actors = _actors(config)
    return ds.map_batches(Captioner, fn_constructor_args=(config, max(1, config.concurrency // actors)), concurrency=actors,
                          batch_size=BATCH_ROWS, batch_format="pyarrow", num_cpus=0.5)


def caption_dataset(ds: Any, config: JobConfig) -> Any:
    """For Ray pipelines of your own: a Dataset of manifest rows (id, image, and optional prompt) -> output rows,
    with the local engine's columns and types. Nothing is written and nothing is resumed: that is the caller's."""

    def items(batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        return pa.Table.from_pylist(list(manifest_items(
            ManifestRow(i, str(r.get("id") or r["image"]), r["image"], r.get("source") or r["image"], r.get("prompt")) for i, r in enumerate(rows, 1))))

    def columns(batch: pa.Table) -> pa.Table:
        return rows_to_table([json.loads(text) for text in batch.column("row").to_pylist()])

    return caption_json(ds.map_batches(items, batch_format="pyarrow"), config).map_batches(columns, batch_format="pyarrow")


def run_on_ray(rows: Iterable[ManifestRow], config: JobConfig, writer: Any, progress: Progress) -> str | None:
    """The driver: the rows left go to Ray, and every row that comes back goes through the run's writer and progress.
    Returns why the run was aborted, if it was (a run-ending error, as the local engine stops on)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'pipeline[ray]' (or ray[data])") from None
    if not ray.is_initialized():
        ray.init(address=config.ray_address or None, include_dashboard=False, log_to_driver=False)
    items = list(manifest_items(rows))
    if not items:
        return None
    # Enough blocks for every actor to have work (from_items makes one block of a short list).
    blocks = max(1, min(len(items), 4 * _actors(config), math.ceil(len(items) / 8)))
    out = caption_json(ray.data.from_items(items, override_num_blocks=blocks), config)
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        for text in batch.column("row").to_pylist():
            row = json.loads(text)
            writer.write(row)
            attempts = row.get("attempts") or 0  # made in an actor: counted here, for the bar and the summary
            progress.counters.requests += attempts
            progress.counters.rows_sent += attempts > 0
            progress.record(row)
            if row.get("error_type") in RUN_ENDING:
                return f"aborted: {row.get('error')}"
    return None
