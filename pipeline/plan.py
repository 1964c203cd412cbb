"""What this run will do: the rows to do after resume and --limit, counted while the run goes, and the start event.

The rows to do are read in a thread ahead of the workers, up to READ_AHEAD_ROWS of them. When that
reader reaches the manifest's end first (a small manifest, or the nightly case: a large manifest that
is mostly done), its own pass is the count. Only when the rows to do outnumber the read-ahead (or with
--limit) does a second reader count them, beside the run (it reads the manifest and asks the resume
index, but builds no rows). The start event waits at most WAIT_FOR_COUNT for an exact plan; otherwise
the plan is logged when it is known.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from .config import JobConfig
from .manifest import Manifest
from .progress import Progress
from .records import ManifestRow

if TYPE_CHECKING:
    from .tasks import TaskRows

log = logging.getLogger("pipeline")

WAIT_FOR_COUNT = 0.25  # seconds the first request may wait for an exact count in the start event
READ_AHEAD_ROWS = 20_000  # rows to do held ahead of the workers (a few MB): a resume with fewer reads the manifest once


@dataclass(frozen=True)
class Plan:
    to_do: int  # rows this run will send or fail (after --limit): one per image and task left, for a job with tasks
    already_done: int  # output rows (of an image and task) already there
    duplicates: int
    rows: int  # distinct ids in the manifest


def count_plan(manifest: Manifest, work: "TaskRows", limit: int | None, cancelled: threading.Event) -> Plan | None:
    """Read the manifest once on its own reader; None when cancelled or when it cannot be read (the run will say why)."""
    reader = manifest.second_reader()
    already = 0

    def done(n: int) -> None:  # heard for every row read when the output has rows: mostly-done manifests stop fast too
        nonlocal already
        if cancelled.is_set():
            raise _Cancelled
        already += n

    left = 0
    try:
        for _ in work.rows_to_do(reader.rows, limit, done):
            if cancelled.is_set():
                raise _Cancelled
            left += 1
    except Exception:  # noqa: BLE001 - _Cancelled, or a manifest error the run itself reports
        return None
    return Plan(left, already, reader.stats.duplicates, reader.stats.rows)


class _Cancelled(Exception):
    pass


class ReadAhead:
    """The rows to do, read in a thread into a bounded queue; iterate it (from one thread) to take them.

    `ended` (with how many rows it read) or `filled` is called on the event loop, whichever comes first.
    """

    _END = object()

    def __init__(self, rows: Iterator[ManifestRow], room: int, ended: Callable[[int], None], filled: Callable[[], None]):
        self._queue: queue.Queue = queue.Queue(maxsize=room)
        self._closed = threading.Event()
        self._error: BaseException | None = None
        loop = asyncio.get_running_loop()
        self._ended = lambda n: loop.call_soon_threadsafe(ended, n)
        self._filled = lambda: loop.call_soon_threadsafe(filled)
        threading.Thread(target=self._read, args=(rows,), name="read-ahead", daemon=True).start()

    def _read(self, rows: Iterator[ManifestRow]) -> None:
        read, filled = 0, False
        try:
            for row in rows:
                if self._closed.is_set():
                    return
                try:
                    self._queue.put_nowait(row)
                except queue.Full:
                    if not filled:
                        filled = True
                        self._filled()
                    self._queue.put(row)
                read += 1
            if not self._closed.is_set():
                self._ended(read)
        except BaseException as e:  # noqa: BLE001 - a manifest error: the consumer raises it, in order
            self._error = e
        finally:
            self._queue.put(self._END)

    def __iter__(self) -> Iterator[ManifestRow]:
        while (row := self._queue.get()) is not self._END:
            yield row
        if self._error is not None and not self._closed.is_set():
            raise self._error

    def close(self) -> None:
        """Stop reading; a consumer waiting for a row gets the end."""
        self._closed.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._queue.put_nowait(self._END)


class Planning:
    """The rows to do (`rows`, for the pool) and their plan, from the read-ahead's pass or a second reader's."""

    def __init__(self, manifest: Manifest, work: "TaskRows", limit: int | None, progress: Progress, rows: Iterator[ManifestRow]):
        self._manifest, self._work, self._limit, self._progress = manifest, work, limit, progress
        self.plan: asyncio.Future[Plan | None] = asyncio.get_running_loop().create_future()
        self._cancelled = threading.Event()
        self._counting: asyncio.Future | None = None
        self.rows = ReadAhead(rows, READ_AHEAD_ROWS, ended=self._read_to_the_end, filled=self._count)
        if limit is not None:  # the read-ahead stops at the limit: only a full pass knows what else is done
            self._count()

    def _read_to_the_end(self, to_do: int) -> None:
        if self._limit is None and not self.plan.done():
            stats = self._manifest.stats
            self.plan.set_result(Plan(to_do, self._progress.counters.skipped, stats.duplicates, stats.rows))
            self._cancelled.set()  # a second reader started meanwhile is not needed

    def _count(self) -> None:
        if self._counting is None and not self.plan.done():
            self._counting = asyncio.ensure_future(asyncio.to_thread(count_plan, self._manifest, self._work, self._limit, self._cancelled))
            self._counting.add_done_callback(self._counted)

    def _counted(self, counting: asyncio.Future) -> None:
        plan = None if counting.cancelled() or counting.exception() else counting.result()
        if plan is not None and not self.plan.done():
            self.plan.set_result(plan)

    def stop(self) -> None:
        self._cancelled.set()
        self.rows.close()


async def start(config: JobConfig, manifest: Manifest, work: "TaskRows", progress: Progress, rows_in_output: int,
                rows: Iterator[ManifestRow]) -> Planning:
    """Start reading `rows` ahead and counting the plan; log the start event, with the plan when it is known within WAIT_FOR_COUNT."""
    planning = Planning(manifest, work, config.limit, progress, rows)
    done, _ = await asyncio.wait({planning.plan}, timeout=WAIT_FOR_COUNT)
    plan = planning.plan.result() if done else None
    if plan is not None:
        progress.counters.total = plan.to_do
    what = f"{plan.to_do} rows to do" if plan else f"up to {progress.counters.to_do} rows to do (still counting)"
    already = f", {plan.already_done} already done" if plan else f", {rows_in_output} rows already in the output" if rows_in_output else ""
    limit = f", --limit {config.limit}" if config.limit is not None else ""
    into = f" -> {config.output}" if plan is None or plan.to_do else ""  # name no file that will not be written
    log.info(
        "start: %s%s%s; %s%s; model %s at %s%s, concurrency %d",
        what, already, limit, manifest.path, into, config.model, config.base_url,
        f" as {config.batch_api} batch jobs" if config.batch and config.batch_api != "file" else "", config.concurrency,
        extra={"event": "start", "plan": {**(asdict(plan) if plan else {"to_do": None, "counting": True}),
                                          "manifest_rows_at_most": manifest.count(), "rows_in_output": rows_in_output,
                                          "limit": config.limit},
               "options": config.public_options()},
    )
    if plan is None:
        planning.plan.add_done_callback(lambda f: _counted(f, progress))
    return planning


def _counted(counting: asyncio.Future, progress: Progress) -> None:
    plan = None if counting.cancelled() or counting.exception() else counting.result()
    if plan is None:
        return
    if progress.counters.total is None:
        progress.counters.total = plan.to_do
    log.info("plan: %d rows to do, %d already done", plan.to_do, plan.already_done, extra={"event": "plan", "plan": asdict(plan)})
