"""Wires the stages: manifest -> image loading -> request -> response parsing -> result writer.

A bounded queue feeds `concurrency` workers, so at most that many requests are
in flight and memory does not grow with the manifest. One aiohttp session is
shared by all workers. Every manifest row becomes exactly one result row; rows
the output already holds (same id, same request fingerprint, ok) are skipped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import os
import socket
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp

from .client import ChatClient
from .cost import Budget, load_price, row_cost
from .config import JobConfig
from .errors import (
    EXIT_ABORTED,
    EXIT_BUDGET,
    EXIT_OK,
    EXIT_ROWS_FAILED,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    AnswerError,
    APIError,
    ConfigError,
    ImageError,
    ManifestError,
    ManifestRowError,
    PipelineError,
    OutputWriteError,
    RunAborted,
    exit_code_for,
)
from .failures import FailureWatch
from .fetch import make_fetch_session
from .images import ImageLoader
from .lock import OutputLock
from .manifest import Manifest, open_manifest
from .pool import StopRequest, run_pool, signals_to
from .progress import Counters, Progress
from .providers import accepted_image_formats
from .ratelimit import RateLimiter, estimate_tokens, provider_family
from .records import ManifestRow, PreparedImage
from .request import build_chat_request, encode_chat_request
from .results import error_row, ok_row
from .resume import ResumeIndex, fingerprinter
from .retry import RetryPolicy
from .runlog import append_run_record
from .usage import billed_usage
from .writer import ResultWriter

log = logging.getLogger("pipeline")

@dataclass(frozen=True)
class RunSummary:
    output: Path | None
    rows: int
    ok: int
    error: int
    skipped: int
    requests: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    duplicates: int
    seconds: float
    exit_code: int
    error_types: dict[str, int] = field(default_factory=dict)
    aborted: str | None = None
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" / "max-cost"
    dry_run: bool = False
    estimated_input_tokens: int | None = None  # dry runs

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def line(self) -> str:
        if self.rows == 0 and self.skipped and not self.dry_run:
            return f"nothing to do: all {self.skipped} rows are already in {self.output} (0 requests sent; --redo captions them again)"
        errors = f" ({', '.join(f'{t}: {n}' for t, n in sorted(self.error_types.items()))})" if self.error_types else ""
        what = "dry run" if self.dry_run else "aborted" if self.aborted else f"stopped by {self.stopped_by}" if self.stopped_by else "done"
        where = f" -> {self.output}" if self.output and not self.dry_run else ""
        skipped = f", {self.skipped} already done" if self.skipped else ""
        dup = f", {self.duplicates} duplicate ids skipped" if self.duplicates else ""
        return (
            f"{what} in {self.seconds:.1f} s: {self.rows} rows, {self.ok} ok, {self.error} error{errors}{skipped}{dup}, "
            f"{self.requests} requests ({self.retries} retries), {self.total_tokens} tokens, ${self.cost_usd:.4f}{where}"
        )


def run_job(config: JobConfig) -> RunSummary:
    """Run one job to the end and return its summary (what the CLI and a notebook call)."""
    return asyncio.run(run_job_async(config))


async def run_job_async(config: JobConfig) -> RunSummary:
    if config.dry_run:
        return await _dry_run(config, open_manifest(config.manifest))
    started_at = time.time()
    try:
        return await _run(config, started_at)
    except (Exception, KeyboardInterrupt, asyncio.CancelledError) as e:
        # Every run gets its line in the run record, however it ends: cron alerts read it.
        record = _run_record(config, None, started_at, exit_code=exit_code_for(e), error=f"{type(e).__name__}: {e}")
        # Where the output cannot be written, the record cannot either; the error already says so.
        append_run_record(config.output, record, required=False, quiet=isinstance(e, OutputWriteError))
        raise


async def _run(config: JobConfig, started_at: float) -> RunSummary:
    manifest = open_manifest(config.manifest)
    stop = StopRequest()
    aborted = None
    with OutputLock(config.output):
        writer = ResultWriter(config.output).open()
        progress = Progress(manifest.count())
        try:
            index = ResumeIndex() if config.redo else ResumeIndex.load(config.output, retry_errors=config.retry_errors)
            rows = _rows_to_do(config, manifest, index, progress.counters)
            connector = aiohttp.TCPConnector(limit=config.concurrency)
            async with aiohttp.ClientSession(connector=connector) as session, _image_loader(config) as images:
                client = ChatClient(
                    session, config.base_url, config.api_key, config.timeout,
                    stall_timeout=config.stall_timeout, extra_headers=config.extra_headers,
                    limiter=RateLimiter(rpm=config.rpm, tpm=config.tpm), answer_tokens=config.max_tokens,
                )
                job = CaptionJob(config, images, client, writer, progress, stop)
                with signals_to(stop):
                    try:
                        await run_pool(rows, job.prepare, config.concurrency, progress, send=job.send, stop=stop, grace=config.grace)
                    except* RunAborted as group:
                        aborted = str(group.exceptions[0])
                        log.error("%s", aborted)
                    except* (ManifestError, OutputWriteError) as group:  # what finished is still written below
                        raise group.exceptions[0] from None
        finally:
            progress.close()
            writer.close()
        summary = _summary(config, manifest, progress, aborted=aborted, stopped_by=stop.reason)
        append_run_record(config.output, _run_record(config, summary, started_at))
    return summary


@asynccontextmanager
async def _image_loader(config: JobConfig) -> AsyncIterator[ImageLoader]:
    """The job's image settings, with a guarded download session when --fetch-remote is on."""
    settings = {"max_side": config.max_image_side, "max_bytes": config.max_image_bytes,
                "accepted": accepted_image_formats(config.image_formats, config.base_url, config.model)}
    if not config.fetch_remote:
        yield ImageLoader(**settings)
        return
    async with make_fetch_session(allow_private=config.allow_private_urls) as fetch_session:
        yield ImageLoader(**settings, fetch_session=fetch_session, fetch_timeout=config.timeout)


def _rows_to_do(config: JobConfig, manifest: Manifest, index: ResumeIndex, counters: Counters) -> Iterator[ManifestRow]:
    fingerprint = fingerprinter(config)

    def done(row_id: str, prompt: str | None, source: str) -> bool:
        if index.is_done(row_id, fingerprint(prompt or config.prompt), source):
            counters.skipped += 1
            return True
        return False

    todo = manifest.rows(skip=done if index.rows_in_output else None)  # an empty output: no need to ask for each row
    return todo if config.limit is None else itertools.islice(todo, config.limit)


@dataclass(slots=True)
class ReadyRequest:
    """A row whose request is built and waiting to be sent."""

    row: ManifestRow
    image: PreparedImage
    body: bytes
    tokens: int  # estimated, for a tokens-per-minute limit
    fingerprint: str


class CaptionJob:
    """What happens to one row: load the image, send it (with retries), write the result."""

    def __init__(self, config: JobConfig, images: ImageLoader, client: ChatClient, writer: ResultWriter, progress: Progress, stop: StopRequest):
        self.config = config
        self.images = images
        self.client = client
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.retry = RetryPolicy(max_retries=config.max_retries)
        self.fingerprint = fingerprinter(config)
        self.failures = FailureWatch(config.max_consecutive_failures)
        self.price = load_price(config.prices, config.model)
        self.budget = Budget(config.max_cost)
        if config.max_cost is not None and self.price is None:
            raise ConfigError(f"--max-cost needs a price for {config.model}: add it to {config.prices}")

    async def prepare(self, row: ManifestRow) -> ReadyRequest | None:
        """Load the row's image and build its request; a row that fails here is finished (None)."""
        prompt = row.prompt or self.config.prompt
        fingerprint = self.fingerprint(prompt)
        if row.problem:
            self._finish(*self._failed(row, ManifestRowError(row.problem), fingerprint))
            return None
        try:
            image = await self.images.load(row)
        except ImageError as e:
            self._finish(*self._failed(row, e, fingerprint))
            return None
        body = encode_chat_request(self.config, prompt, image.url)
        return ReadyRequest(row, image, body, self._estimate_tokens(image, prompt), fingerprint)

    async def send(self, ready: ReadyRequest) -> None:
        """Send a prepared row (with retries) within the cost budget, and write its result."""
        worst_case = self.price.cost(ready.tokens - self.config.max_tokens, self.config.max_tokens) if self.price else 0.0
        if not self.budget.reserve(worst_case):  # not sent: the next run takes it
            self.stop("max-cost", f" (${self.budget.spent:.4f} spent, ${self.budget.reserved:.4f} in flight, limit ${self.config.max_cost:g})")
            return
        try:
            result, error = await self._send(ready.row, ready.image, ready.body, ready.tokens, ready.fingerprint)
        except BaseException:
            self.budget.settle(worst_case, worst_case)  # cancelled in flight: it may still be billed
            raise
        self.budget.settle(worst_case, result["cost_usd"] or 0.0)
        self._finish(result, error)

    def _finish(self, result: dict[str, Any], error: PipelineError | None) -> None:
        self.writer.write(result)
        self.progress.record(result)
        self.failures.check(error, result["error"] or "")

    async def _send(self, row: ManifestRow, image: PreparedImage, body: bytes, tokens: int, fingerprint: str) -> tuple[dict[str, Any], PipelineError | None]:
        attempts = 0
        started = time.monotonic()

        async def attempt():
            nonlocal attempts, started
            attempts += 1
            started = time.monotonic()
            return await self.client.complete(body, stream=self.config.stream, tokens=tokens)

        try:
            completion = await self.retry.run(attempt)
        except APIError as e:
            # An empty answer or a refusal was billed: its row keeps the tokens and their cost.
            cost = self._cost(e.usage) if isinstance(e, AnswerError) else None
            return self._failed(row, e, fingerprint, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000,
                                cost_usd=cost, image=image)
        latency_ms = (time.monotonic() - started) * 1000
        cost = self._cost(completion.usage)
        return ok_row(row, image, completion, attempts=attempts, latency_ms=latency_ms, fingerprint=fingerprint, cost_usd=cost), None

    def _cost(self, usage: dict[str, Any]) -> float | None:
        return row_cost(self.price, billed_usage(usage))

    def _estimate_tokens(self, image: PreparedImage, prompt: str) -> int:
        """What the provider will count against a tokens-per-minute limit, before it says: input plus the longest answer."""
        return estimate_input_tokens(self.config, image, prompt) + self.config.max_tokens

    def _failed(self, row: ManifestRow, error: PipelineError, fingerprint: str, **kwargs: Any) -> tuple[dict[str, Any], PipelineError]:
        message = self.config.redact(str(error))
        return error_row(row, error, message=message, model=self.config.model, fingerprint=fingerprint, **kwargs), error


def estimate_input_tokens(config: JobConfig, image: PreparedImage, prompt: str) -> int:
    """Prompt tokens the provider will bill: its image formula on the size sent, plus the text."""
    # A URL the provider fetches has a size we never see: assume a full-size image.
    width, height = (image.width, image.height) if image.width else (config.max_image_side, config.max_image_side * 3 // 4)
    text = len(prompt) + len(config.system or "")
    return estimate_tokens(width, height, text, 0, detail=config.image_detail, provider=provider_family(config.model))


async def _dry_run(config: JobConfig, manifest: Manifest) -> RunSummary:
    """Read and check every row and image; send nothing; say what would be sent."""
    index = ResumeIndex() if config.redo else ResumeIndex.load(config.output, retry_errors=config.retry_errors)
    progress = Progress(manifest.count())
    rows = _rows_to_do(config, manifest, index, progress.counters)
    invalid: list[str] = []
    example: list[dict[str, Any]] = []
    input_tokens = 0
    unknown_size = 0

    async with _image_loader(config) as images:

        async def check(row: ManifestRow) -> None:
            try:
                if row.problem:
                    raise ManifestRowError(row.problem)
                image = await images.load(row)
            except (ImageError, ManifestRowError) as e:
                progress.record(error_row(row, e))
                if len(invalid) < 20:
                    invalid.append(f"  {row.id}: {e.error_type}: {e}")
                return
            nonlocal input_tokens, unknown_size
            progress.record({"status": "ok"})
            input_tokens += estimate_input_tokens(config, image, row.prompt or config.prompt)
            unknown_size += image.width is None
            if not example:
                shown = image.url if len(image.url) <= 80 else image.url[:60] + f"...<{len(image.url)} characters>"
                example.append(build_chat_request(config, row.prompt or config.prompt, shown))

        await run_pool(rows, check, config.concurrency, progress)
    progress.close()
    c = progress.counters
    print(f"dry run: nothing was sent. {c.done + c.skipped} rows read from {manifest.path}")
    print(f"  already done in {config.output}: {c.skipped} rows")
    print(f"  would send {c.ok} requests to {config.base_url.rstrip('/')}/chat/completions (model {config.model})")
    if c.error:
        print(f"  {c.error} rows would fail without a request:")
        print("\n".join(invalid) + ("\n  ..." if c.error > len(invalid) else ""))
    if manifest.stats.duplicates:
        print(f"  {manifest.stats.duplicates} duplicate ids would be skipped")
    guessed = f" ({unknown_size} remote images counted at full size: their size is unknown until the provider fetches them)" if unknown_size else ""
    print(f"  estimated input tokens: {input_tokens:,}{guessed}")
    price = load_price(config.prices, config.model)
    if price is None:
        print(f"  estimated cost: unknown ({config.model} has no price in {config.prices})")
    elif c.ok:
        # Captions rarely use all of max_tokens: the range runs from a quarter of it to all of it.
        low = price.cost(input_tokens, c.ok * config.max_tokens // 4)
        high = price.cost(input_tokens, c.ok * config.max_tokens)
        print(f"  estimated cost: ${low:.4f} to ${high:.4f} (input ${price.cost(input_tokens, 0):.4f}; answers of "
              f"{config.max_tokens // 4} to {config.max_tokens} tokens each)")
    if example:
        print("  example request body:\n" + json.dumps(example[0], indent=2, ensure_ascii=False))
    return dataclasses.replace(_summary(config, manifest, progress, dry_run=True), estimated_input_tokens=input_tokens)


def _summary(
    config: JobConfig,
    manifest: Manifest,
    progress: Progress,
    *,
    aborted: str | None = None,
    stopped_by: str | None = None,
    dry_run: bool = False,
) -> RunSummary:
    c: Counters = progress.counters
    if aborted:
        code = EXIT_ABORTED
    elif stopped_by:
        code = {"SIGTERM": EXIT_SIGTERM, "SIGINT": EXIT_SIGINT, "max-cost": EXIT_BUDGET}[stopped_by]
    else:
        code = EXIT_ROWS_FAILED if c.error else EXIT_OK
    return RunSummary(
        output=config.output,
        rows=c.done,
        ok=c.ok,
        error=c.error,
        skipped=c.skipped,
        requests=c.requests,
        retries=c.retries,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        cost_usd=round(c.cost_usd, 6),
        duplicates=manifest.stats.duplicates,
        seconds=progress.elapsed,
        exit_code=code,
        error_types=dict(c.error_types),
        aborted=aborted,
        stopped_by=stopped_by,
        dry_run=dry_run,
    )


def _run_record(config: JobConfig, summary: RunSummary | None, started_at: float, **outcome: Any) -> dict[str, Any]:
    """One line of <output>.runs.jsonl; a run that ended on an error has no summary, only its exit code and why."""
    utc = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    record = {
        "run_id": uuid.uuid4().hex[:12],
        "started_at": utc(started_at),
        "ended_at": utc(time.time()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "options": config.public_options(),
        **({k: v for k, v in asdict(summary).items() if k not in ("output", "dry_run")} if summary else {}),
        **({"total_tokens": summary.total_tokens} if summary else {}),
        **outcome,
    }
    return json.loads(config.redact(json.dumps(record, default=str)))
