"""Wires the stages: manifest -> image loading -> request -> response parsing -> result writer.

A bounded queue feeds `concurrency` workers, so at most that many requests are
in flight and memory does not grow with the manifest. One aiohttp session is
shared by all workers. Every manifest row becomes exactly one result row.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Iterator

import aiohttp

from .client import ChatClient
from .config import JobConfig
from .errors import (
    EXIT_ABORTED,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    APIError,
    AuthenticationError,
    ImageError,
    ManifestError,
    ManifestRowError,
    PipelineError,
    RunAborted,
)
from .images import load_image
from .manifest import Manifest, open_manifest
from .progress import Counters, Progress
from .records import ManifestRow
from .request import build_chat_request, encode_body
from .results import error_row, ok_row
from .retry import RetryPolicy
from .writer import ResultWriter

log = logging.getLogger("pipeline")

# Rows read from the manifest per trip to a worker thread (reading never blocks the event loop).
READ_BATCH = 256


@dataclass(frozen=True)
class RunSummary:
    output: Path | None
    rows: int
    ok: int
    error: int
    requests: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    duplicates: int
    seconds: float
    exit_code: int
    error_types: dict[str, int] = field(default_factory=dict)
    aborted: str | None = None
    dry_run: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def line(self) -> str:
        errors = f" ({', '.join(f'{t}: {n}' for t, n in sorted(self.error_types.items()))})" if self.error_types else ""
        what = "dry run" if self.dry_run else ("aborted" if self.aborted else "done")
        where = f" -> {self.output}" if self.output and not self.dry_run else ""
        dup = f", {self.duplicates} duplicate ids skipped" if self.duplicates else ""
        return (
            f"{what} in {self.seconds:.1f} s: {self.rows} rows, {self.ok} ok, {self.error} error{errors}{dup}, "
            f"{self.requests} requests ({self.retries} retries), {self.total_tokens} tokens{where}"
        )


def run_job(config: JobConfig) -> RunSummary:
    """Run one job to the end and return its summary (what the CLI and a notebook call)."""
    return asyncio.run(run_job_async(config))


async def run_job_async(config: JobConfig) -> RunSummary:
    manifest = open_manifest(config.manifest)
    total = manifest.count() if config.limit is None else min(manifest.count(), config.limit)
    rows = manifest.rows() if config.limit is None else itertools.islice(manifest.rows(), config.limit)
    progress = Progress(total)
    if config.dry_run:
        return await _dry_run(config, manifest, rows, progress)

    writer = ResultWriter(config.output).open()
    aborted = None
    try:
        connector = aiohttp.TCPConnector(limit=config.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            job = CaptionJob(config, ChatClient(session, config.base_url, config.api_key, config.timeout), writer, progress)
            try:
                await run_pool(rows, job.process, config.concurrency, progress)
            except* RunAborted as group:
                aborted = str(group.exceptions[0])
                log.error("%s", aborted)
            except* ManifestError as group:  # the manifest broke mid-way; what finished is still written below
                raise group.exceptions[0] from None
    finally:
        progress.close()
        writer.close()
    return _summary(config, manifest, progress, aborted=aborted)


class CaptionJob:
    """What happens to one row: load the image, send it (with retries), write the result."""

    def __init__(self, config: JobConfig, client: ChatClient, writer: ResultWriter, progress: Progress):
        self.config = config
        self.client = client
        self.writer = writer
        self.progress = progress
        self.retry = RetryPolicy(max_retries=config.max_retries)

    async def process(self, row: ManifestRow) -> None:
        result = await self._caption(row)
        self.writer.write(result)
        self.progress.record(result)
        if result["error_type"] == AuthenticationError.error_type:
            # Every other request would fail the same way: stop now, keep what finished.
            raise RunAborted(f"aborted: {result['error']}")

    async def _caption(self, row: ManifestRow) -> dict[str, Any]:
        if row.problem:
            return self._failed(row, ManifestRowError(row.problem))
        try:
            image = await load_image(row)
        except ImageError as e:
            return self._failed(row, e)
        prompt = row.prompt or self.config.prompt
        body = encode_body(build_chat_request(self.config, prompt, image.url))
        attempts = 0
        started = time.monotonic()

        async def attempt():
            nonlocal attempts, started
            attempts += 1
            started = time.monotonic()
            return await self.client.complete(body)

        try:
            completion = await self.retry.run(attempt)
        except APIError as e:
            return self._failed(row, e, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000)
        return ok_row(row, image, completion, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000)

    def _failed(self, row: ManifestRow, error: PipelineError, **kwargs: Any) -> dict[str, Any]:
        return error_row(row, error, message=self.config.redact(str(error)), model=self.config.model, **kwargs)


async def run_pool(
    rows: Iterable[ManifestRow],
    handle: Callable[[ManifestRow], Awaitable[None]],
    concurrency: int,
    progress: Progress,
) -> None:
    """Feed rows through a bounded queue to `concurrency` workers; an exception in one stops them all."""
    queue: asyncio.Queue[ManifestRow | None] = asyncio.Queue(maxsize=2 * concurrency)

    async def feed() -> None:
        iterator: Iterator[ManifestRow] = iter(rows)
        while batch := await asyncio.to_thread(lambda: list(itertools.islice(iterator, READ_BATCH))):
            for row in batch:
                await queue.put(row)
        for _ in range(concurrency):
            await queue.put(None)

    async def work() -> None:
        while (row := await queue.get()) is not None:
            await handle(row)

    heartbeat = asyncio.create_task(progress.heartbeat())
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(feed())
            for _ in range(concurrency):
                group.create_task(work())
    finally:
        heartbeat.cancel()


async def _dry_run(config: JobConfig, manifest: Manifest, rows: Iterable[ManifestRow], progress: Progress) -> RunSummary:
    """Read and check every row and image; send nothing; say what would be sent."""
    invalid: list[str] = []
    example: list[dict[str, Any]] = []

    async def check(row: ManifestRow) -> None:
        try:
            if row.problem:
                raise ManifestRowError(row.problem)
            image = await load_image(row)
        except (ImageError, ManifestRowError) as e:
            progress.record(error_row(row, e))
            if len(invalid) < 20:
                invalid.append(f"  {row.id}: {e.error_type}: {e}")
            return
        progress.record({"status": "ok"})
        if not example:
            shown = image.url if len(image.url) <= 80 else image.url[:60] + f"...<{len(image.url)} characters>"
            example.append(build_chat_request(config, row.prompt or config.prompt, shown))

    await run_pool(rows, check, config.concurrency, progress)
    progress.close()
    c = progress.counters
    print(f"dry run: nothing was sent. {c.done} rows read from {manifest.path}")
    print(f"  would send {c.ok} requests to {config.base_url.rstrip('/')}/chat/completions (model {config.model})")
    if c.error:
        print(f"  {c.error} rows would fail without a request:")
        print("\n".join(invalid) + ("\n  ..." if c.error > len(invalid) else ""))
    if manifest.stats.duplicates:
        print(f"  {manifest.stats.duplicates} duplicate ids would be skipped")
    if example:
        print("  example request body:\n" + json.dumps(example[0], indent=2, ensure_ascii=False))
    return _summary(config, manifest, progress, dry_run=True)


def _summary(config: JobConfig, manifest: Manifest, progress: Progress, *, aborted: str | None = None, dry_run: bool = False) -> RunSummary:
    c: Counters = progress.counters
    if aborted:
        code = EXIT_ABORTED
    else:
        code = EXIT_ROWS_FAILED if c.error else EXIT_OK
    return RunSummary(
        output=config.output,
        rows=c.done,
        ok=c.ok,
        error=c.error,
        requests=c.requests,
        retries=c.retries,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        duplicates=manifest.stats.duplicates,
        seconds=progress.elapsed,
        exit_code=code,
        error_types=dict(c.error_types),
        aborted=aborted,
        dry_run=dry_run,
    )
