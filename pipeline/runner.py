"""Wires the stages: manifest -> image loading -> request -> response parsing -> result writer.

Reads top to bottom as the run: open the manifest, take the output's lock, recover and open the
writer, find what is left (resume), then let the worker pool run CaptionJob (job.py) over those
rows with one shared aiohttp session and rate limiter; write everything, summarize, record the run.
A dry run (dryrun.py) reads the same rows and sends nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Iterable, Iterator

import aiohttp

from .batch.ledger import Ledger
from .client import ChatClient
from .config import JobConfig
from .cost import Price, load_price, unpriced_note
from .errors import ConfigError, ManifestError, OutputWriteError, RunAborted, exit_code_for
from .fetch import make_fetch_session
from .images import ImageLoader
from .job import CaptionJob
from . import plan
from .manifest import Manifest, open_manifest
from .pool import StopRequest, run_pool, signals_to
from .progress import Counters, Progress
from .providers import accepted_image_formats
from .ratelimit import RateLimiter
from .records import ManifestRow
from .resume import ResumeIndex
from .rowkey import key
from .remote import local_output
from .runlog import append_run_record
from .storage import Storage
from .target import Target
from .summary import RunSummary, run_record, summarize_run
from .dedupe import Dedupe, batch_keys, journal_rows, output_rows
from .tasks import TaskRows, answer_columns
from .files import temporary_path
from .merge import anchor
from .writer import ResultWriter

log = logging.getLogger("pipeline")

def run_job(config: JobConfig) -> RunSummary:
    """Run one job to the end and return its summary (what the CLI and a notebook call)."""
    return asyncio.run(run_job_async(config))


async def run_job_async(config: JobConfig) -> RunSummary:
    if config.dry_run:
        return await _dry_run(config)
    started_at = time.time()
    try:
        return await _run(config, started_at)
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as e:
        # Every run gets its line in the run record, however it ends: cron alerts read it.
        record = run_record(config, None, started_at, exit_code=exit_code_for(e), error=f"{type(e).__name__}: {e}")
        # Where the output cannot be written, the record cannot either; the error already says so.
        append_run_record(local_output(config.output), record, required=False, quiet=isinstance(e, OutputWriteError))
        raise


async def _run(config: JobConfig, started_at: float) -> RunSummary:
    with Storage(config.storage, threads=config.concurrency) as store:
        return await _run_with(config, store, started_at)


async def _run_with(config: JobConfig, store: Storage, started_at: float) -> RunSummary:
    manifest = open_manifest(config.manifest, config.image_column, config.id_column, store)
    price = load_price(config.prices, config.model)
    if config.max_cost is not None and price is None:  # before any file is touched
        raise ConfigError(f"--max-cost needs a price for {config.model}: add it to a copy of {config.prices} and pass --prices")
    if config.batch:
        config = dataclasses.replace(config, stream=False)  # a batch line is answered whole: the body is the online one, unstreamed
    stop = StopRequest()
    aborted = budget = batch_note = dedupe = None
    target = Target(config.output, store)
    async with target.held():
        answers = answer_columns(config)  # every task's structured answer's typed columns
        writer = ResultWriter(target.local, columns=answers).open()
        target.publish()  # what a killed run left, recovered by open()
        progress = _progress(config, manifest, price)
        planning = None
        try:
            index = ResumeIndex() if config.redo else ResumeIndex.load(target.local, retry_errors=config.retry_errors,
                                                                         answered=config.dedupe, store=store, remote=target.remote)
            work = TaskRows(config, index)
            rows = _rows_to_do(config, manifest, work, progress.counters)
            planning = await plan.start(config, manifest, work, progress, index.rows_in_output, rows)
            ledger = Ledger.open(target.local)
            ledger.remove_orphans()  # a batch a kill stopped while it filled: never recorded, its rows are to do
            rows = _not_in_live_batches(planning.rows, ledger, config.batch)
            if config.dedupe and config.engine == "local":
                dedupe = Dedupe(temporary_path(anchor(target.local), ".twins"), index.answered, answers.names if answers else ())
                dedupe.answered.update(batch_keys(ledger.rows_path(b.key) for b in ledger.live()))
            if config.batch:
                from .batch.backend import run_batches  # only for --batch

                async with _image_loader(config, store) as images:
                    with signals_to(stop):
                        aborted, budget, batch_note = await run_batches(config, rows, images, writer, progress, stop, ledger,
                                                                        target.local, dedupe)
            elif config.engine == "ray":
                from .engine_ray import run_on_ray  # Ray is imported only when it is used
                with signals_to(stop):
                    aborted, budget = await asyncio.to_thread(run_on_ray, rows, config, writer, progress, stop)
            else:
                aborted, budget = await _run_local(config, store, rows, writer, progress, stop, dedupe)
        finally:
            if planning is not None:
                planning.stop()
            if dedupe is not None:
                try:
                    if dedupe.held:
                        _write_reused(dedupe, writer, progress, index)
                finally:
                    dedupe.close()
            progress.close()
            writer.close()
            target.publish()
        summary = summarize_run(config, manifest, progress, aborted=aborted, stopped_by=stop.reason, budget=budget, batches=batch_note)
        target.record(run_record(config, summary, started_at))
    return summary


async def _run_local(config: JobConfig, store: Storage, rows: Iterable[ManifestRow], writer: ResultWriter, progress: Progress,
                     stop: StopRequest, dedupe: Dedupe | None = None) -> tuple[str | None, str | None]:
    """The local engine: the worker pool over one aiohttp session and rate limiter. (why it aborted, the --max-cost note)"""
    aborted = None
    limiter = RateLimiter(rpm=config.rpm, tpm=config.tpm)
    progress.watch(limiter.holding)
    connector = aiohttp.TCPConnector(limit=config.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session, _image_loader(config, store) as images:
        client = ChatClient(
            session, config.base_url, config.api_key, config.timeout,
            stall_timeout=config.stall_timeout, extra_headers=config.extra_headers,
            limiter=limiter, answer_tokens=config.max_tokens,
        )
        job = CaptionJob(config, images, client, writer, progress, stop, dedupe=dedupe)
        with signals_to(stop):
            try:
                await run_pool(rows, job.prepare, config.concurrency, progress, send=job.send, stop=stop, grace=config.grace)
            except* RunAborted as group:
                aborted = str(group.exceptions[0])
                log.error("%s", aborted)
            except* (ManifestError, OutputWriteError) as group:  # what finished is still written below
                raise group.exceptions[0] from None
    return aborted, job.budget_note()


def _write_reused(dedupe: Dedupe, writer: ResultWriter, progress: Progress, index: ResumeIndex) -> None:
    """The held rows, answered by the rows with their image: from the output's earlier runs, then this run's journal."""
    writer.sync()  # this run's rows, on disk to be read back
    earlier = output_rows(index.files, dedupe.hashes, dedupe.answer_columns)
    for row in dedupe.finish(itertools.chain(earlier, journal_rows(writer.journal))):
        writer.write(row)
        progress.record(row)


async def _dry_run(config: JobConfig) -> RunSummary:
    from .dryrun import dry_run  # with what it reads earlier answers with: not on a real run's way

    with Storage(config.storage, threads=config.concurrency) as store:
        manifest = open_manifest(config.manifest, config.image_column, config.id_column, store)
        target = Target(config.output, store)
        index = ResumeIndex() if config.redo else ResumeIndex.load(target.local, retry_errors=config.retry_errors,
                                                                     answered=config.dedupe, store=store, remote=target.remote)
        progress = _progress(config, manifest, load_price(config.prices, config.model))
        rows = _rows_to_do(config, manifest, TaskRows(config, index), progress.counters)
        async with _image_loader(config, store) as images:
            return await dry_run(config, manifest, rows, progress, images, index.answered)


def _not_in_live_batches(rows: Iterable[ManifestRow], ledger: Ledger, batch: bool) -> Iterable[ManifestRow]:
    """The rows that no live provider batch holds: one that does is answered there, never paid for again here."""
    pending = ledger.pending_ids()
    if not len(pending):
        return rows
    if not batch:
        log.warning("%d rows are in provider batches not collected yet (pipeline batch status %s): they are not sent online; "
                    "a --batch run collects them", len(pending), ledger.folder.parent)
    return (row for row in rows if key(row.id, row.task) not in pending)


def _progress(config: JobConfig, manifest: Manifest, price: Price | None) -> Progress:
    tasks = len(config.tasks) or 1  # a row per image and task; --limit counts images
    return Progress(manifest.count() * tasks, limit=config.limit * tasks if config.limit is not None else None,
                    unpriced=None if price else unpriced_note(config.model, config.prices))


@asynccontextmanager
async def _image_loader(config: JobConfig, store: Storage) -> AsyncIterator[ImageLoader]:
    """The job's image settings, with a guarded download session when --fetch-remote is on."""
    settings = {"max_side": config.max_image_side, "max_bytes": config.max_image_bytes, "store": store,
                "accepted": accepted_image_formats(config.image_formats, config.base_url, config.model)}
    if not config.fetch_remote:
        yield ImageLoader(**settings)
        return
    async with make_fetch_session(allow_private=config.allow_private_urls) as fetch_session:
        yield ImageLoader(**settings, fetch_session=fetch_session, fetch_timeout=config.timeout)


def _rows_to_do(config: JobConfig, manifest: Manifest, work: TaskRows, counters: Counters) -> Iterator[ManifestRow]:
    def done(n: int) -> None:
        counters.skipped += n

    todo = work.rows_to_do(manifest.rows, config.limit, done)
    yielded = 0
    for row in todo:
        yielded += 1
        yield row
    counters.total = yielded  # the reader has seen every row: the count is exact now
