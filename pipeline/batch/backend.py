"""The batch backend: the rows left, prepared as online, packed into batch files, submitted, waited for, collected.

A run first settles what earlier runs left (a batch prepared but not known to be submitted is looked up
at the provider before it is submitted, so none is paid for twice), collects every batch that ended,
then packs the rows left into batches within the request and byte limits and submits each as soon as
it is full. With `wait` (the default) it then polls until every live batch has ended and been collected;
with --no-wait it returns, and any later run collects. Rows are written as each batch is downloaded.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Iterable

import aiohttp

from ..config import JobConfig
from ..dedupe import Dedupe
from ..cost import Budget, budget_note, load_price, worst_case_cost
from ..errors import APIConnectionError, APIError, APITimeoutError, RunAborted, ServerError
from ..images import ImageLoader
from ..job import CaptionJob, ReadyRequest
from ..pool import StopRequest, run_pool
from ..progress import Progress
from ..records import ManifestRow
from ..writer import ResultWriter
from .api import BatchState, make_api
from ..request import encode_chat_request
from .collect import collect
from .ledger import Batch, Ledger
from .lines import anthropic_line, openai_line
from .packer import Packer, custom_id
from ..rowkey import key

log = logging.getLogger("pipeline")
# What a poll may meet and live through, once its own retries are spent (a quota or a bad key is not).
TRANSIENT = (APIConnectionError, APITimeoutError, ServerError)


class BatchRun:
    def __init__(self, config: JobConfig, ledger: Ledger, writer: ResultWriter, progress: Progress, stop: StopRequest,
                 session: aiohttp.ClientSession, output: Path | None = None):
        self.config = config
        self.ledger = ledger
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.api = make_api(session, config)
        self.price = load_price(config.prices, config.model, batch=True)
        self.budget = Budget(config.max_cost)
        self.refused: float | None = None
        self.states: dict[str, BatchState] = {}
        self.collected = 0
        self.again = 0  # rows of collected batches the provider never ran (expired, cancelled): the next run submits them
        self.output = output  # the local output, read only to resume a collection a kill interrupted
        self.rejected: list[str] = []  # batches the provider refused at validation: the run ends with exit 3
        for batch in ledger.live():  # what earlier runs submitted may still cost up to this
            self.budget.reserve(batch.worst_usd)
        progress.watch(self.holding)

    def holding(self) -> str | None:
        """The batches, for the progress line: how many are waiting at the provider, running, collected."""
        live = [b for b in self.ledger.live() if b.api != "file"]
        if not live and not self.collected:
            return None
        states = [self.states.get(b.key) for b in live]
        running = sum(1 for s in states if s is not None and s.status in ("in_progress", "finalizing"))
        answered = sum(s.done for s in states if s is not None)
        return (f"batches: {len(live) - running} waiting, {running} in progress ({answered}/{sum(b.rows for b in live)} lines "
                f"answered), {self.collected} collected")

    def budget_note(self) -> str | None:
        if self.refused is None:
            return None
        return budget_note(self.config.max_cost, self.budget.spent, self.budget.reserved, self.refused, self.config.max_tokens)

    async def settle(self) -> None:
        """Submit what an earlier run prepared but did not submit; collect what has ended."""
        for batch in self.ledger.live():
            if batch.api == "file":
                continue
            if not batch.submitted:
                await self.submit(batch)
            await self.poll(batch)

    async def submit(self, batch: Batch) -> None:
        known = {b.batch_id for b in self.ledger.batches.values() if b.batch_id}
        found = await self.api.find(batch, known)
        if found is not None:
            log.info("batch %s was submitted before the last run stopped: %s; not submitting it again", batch.key, found.batch_id)
            self.ledger.record("submitted", batch.key, batch_id=found.batch_id)
            return
        path = self.ledger.requests_path(batch.key)
        if self.api.name == "openai" and batch.file_id is None:
            self.ledger.record("uploaded", batch.key, file_id=await self.api.upload(path))
        state = await self.api.create(batch, path)
        self.ledger.record("submitted", batch.key, batch_id=state.batch_id)
        self.states[batch.key] = state
        log.info("submitted batch %s: %d rows, %.1f MB, as %s", batch.key, batch.rows, batch.bytes / 1e6, state.batch_id)

    async def poll(self, batch: Batch) -> None:
        state = await self.api.get(batch.batch_id)
        self.states[batch.key] = state
        if state.status == "in_progress" or state.ended and state.status != "failed":
            self.ledger.remove_files(batch.key, "requests")  # past validation: the provider holds the lines
        if state.ended:
            await self.collect(batch, state)

    async def collect(self, batch: Batch, state: BatchState) -> None:
        if state.status == "failed":
            self.rejected.append(f"batch {batch.key} ({state.batch_id}) was rejected at validation: {state.problem or 'no reason given'}")
        written, again, cost = await collect(self.ledger, batch, state, self.api, self.config, self.price, self.writer, self.progress,
                                            self.output)
        self.budget.settle(batch.worst_usd, cost)
        self.collected += 1
        self.again += again

    async def wait(self) -> None:
        while live := [b for b in self.ledger.live() if b.api != "file" and b.submitted]:
            if self.stop.requested.is_set():
                return
            try:
                await asyncio.wait_for(self.stop.requested.wait(), self.config.batch_poll)
            except asyncio.TimeoutError:
                pass
            for batch in live:
                if self.stop.requested.is_set():
                    break
                try:
                    await self.poll(batch)
                except TRANSIENT as e:  # hours of waiting outlast a network blip: the next poll tries again
                    log.warning("could not check batch %s (%s); trying again in %g s", batch.key, e, self.config.batch_poll)

    def reserve(self, ready: ReadyRequest) -> float | None:
        """The row's worst case, held from the budget; None when --max-cost has no room left (the run stops)."""
        worst = worst_case_cost(self.price, ready.tokens, self.config.max_tokens)
        if not self.budget.reserve(worst):
            self.refused = max(self.refused or 0.0, worst)
            self.stop("max-cost", f" ({self.budget_note()})")
            return None
        return worst


async def run_batches(config: JobConfig, rows: Iterable[ManifestRow], images: ImageLoader, writer: ResultWriter,
                      progress: Progress, stop: StopRequest, ledger: Ledger,
                      output: Path | None = None, dedupe: Dedupe | None = None) -> tuple[str | None, str | None, str | None]:
    """The batch backend's run: (why it aborted, the --max-cost note, the batches still at the provider)."""
    aborted = None
    async with aiohttp.ClientSession() as session:
        run = BatchRun(config, ledger, writer, progress, stop, session, output)
        job = CaptionJob(config, images, None, writer, progress, stop, encode=batch_encoder(config),
                     dedupe=dedupe)  # prepares only
        exporting = config.batch_api == "file"  # pipeline batch export: recorded, never sent
        packer = Packer(config, ledger, None if exporting else run.submit, run.reserve, config.batch_api)
        heartbeat = asyncio.create_task(progress.heartbeat())
        try:
            if not exporting:
                await run.settle()
            await run_pool(rows, job.prepare, config.concurrency, progress, send=packer.add, stop=stop, grace=config.grace)
            await packer.close()
            if config.batch_wait and not exporting:
                await run.wait()
        except* (APIError, RunAborted) as group:
            error = group.exceptions[0]
            aborted = f"batch API at {config.base_url}: {error}" if isinstance(error, APIError) else str(error)
            log.error("%s", aborted)
        finally:
            heartbeat.cancel()
            await packer.abandon()
    if run.rejected and aborted is None:
        aborted = "; ".join(run.rejected) + " (its rows are to do again: fix the cause, then rerun)"
    return aborted, run.budget_note(), waiting_note(ledger, run.again)


def batch_encoder(config: JobConfig):
    """(task config, row, prompt, image_url) -> the row's whole batch line, for CaptionJob.prepare."""
    if config.batch_api == "anthropic":
        return lambda task, row, prompt, image_url: anthropic_line(custom_id("anthropic", key(row.id, row.task)), task, prompt, image_url)
    return lambda task, row, prompt, image_url: openai_line(custom_id("openai", key(row.id, row.task)),
                                                            encode_chat_request(task, prompt, image_url))


def waiting_note(ledger: Ledger, again: int = 0) -> str | None:
    live = [b for b in ledger.live() if b.api != "file"]
    notes = []
    if live:
        rows = sum(b.rows for b in live)
        notes.append(f"{rows} rows in {len(live)} batches are at the provider: any later run of the same command collects them "
                     f"(`pipeline batch status {ledger.folder.parent}` shows them)")
    if again:
        notes.append(f"{again} rows the provider did not run (their batch expired or was cancelled) are to do again: "
                     "the next run of the same command submits them")
    return "\n  ".join(notes) or None
