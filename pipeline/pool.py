"""The worker pool: a bounded queue, `concurrency` workers, and a two-phase stop.

A reader feeds rows through a bounded queue to the workers (memory does not grow
with the manifest); an exception in one worker stops them all. A stop request
(SIGTERM, Ctrl-C, or the job itself, e.g. at --max-cost) starts no new row and
gives rows in flight a grace period; a second request cancels them at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterable, Iterator, TypeVar

from .progress import Progress
from .records import ManifestRow

log = logging.getLogger("pipeline")

Ready = TypeVar("Ready")  # a prepared row, as `prepare` returns it and `send` takes it

# Rows read from the manifest per trip to a worker thread (reading never blocks the event loop).
READ_BATCH = 256


class StopRequest:
    """The first request stops new rows and lets those in flight finish; the second stops now."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()
        self.reason: str | None = None  # "SIGTERM", "SIGINT" or "max-cost"

    def __call__(self, reason: str, why: str = "") -> None:
        if self.reason is None:
            self.reason = reason
            self.requested.set()
            log.warning("%s%s: taking no new rows; requests in flight may finish (Ctrl-C again to stop at once)", reason, why)
        elif reason in ("SIGINT", "SIGTERM"):
            self.now.set()
            log.warning("%s again: stopping now", reason)


@contextmanager
def signals_to(stop: StopRequest) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # a notebook or a thread: signals are not ours to take
        return
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_pool(*args: Any, **kwargs: Any) -> None:
    """Run rows through a WorkerPool (same arguments) to the end."""
    await WorkerPool(*args, **kwargs).run()


class WorkerPool:
    """Feeds rows through a bounded queue to `concurrency` workers.

    `prepare` does a row's work before its request (None: the row is finished
    already, e.g. its image is unreadable); `send` does the rest. Each worker
    prepares its next row while its current request is in flight, so when an
    answer arrives the next request goes out at once: with many workers answered
    together, preparing on the way would delay every later worker's request
    (a worker holds at most two prepared requests).

    An exception in one worker stops them all. On a stop request no new row is
    started; rows in flight get `grace` seconds, then they are cancelled.
    """

    def __init__(
        self,
        rows: Iterable[ManifestRow],
        prepare: Callable[[ManifestRow], Awaitable[Ready | None]],
        concurrency: int,
        progress: Progress,
        *,
        send: Callable[[Ready], Awaitable[None]] | None = None,
        stop: StopRequest | None = None,
        grace: float = 0.0,
    ):
        self._rows = rows
        self._prepare = prepare
        self._send = send
        self._concurrency = concurrency
        self._progress = progress
        self._stop = stop
        self._grace = grace
        self._queue: asyncio.Queue[ManifestRow | None] = asyncio.Queue(maxsize=2 * concurrency)
        self._closing = False

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._progress.heartbeat())
        running = asyncio.create_task(self._all())
        try:
            if self._stop is None:
                await running
                return
            await self._until_stopped(running)
            try:
                await running
            except asyncio.CancelledError:
                if not self._closing:
                    raise
        finally:
            heartbeat.cancel()
            if not running.done():
                running.cancel()

    async def _until_stopped(self, running: asyncio.Task[None]) -> None:
        """Two-phase stop: the first request closes the queue and gives rows in flight `grace`; the second cancels them."""
        assert self._stop is not None
        requested = asyncio.create_task(self._stop.requested.wait())
        await asyncio.wait({running, requested}, return_when=asyncio.FIRST_COMPLETED)
        requested.cancel()
        if running.done():
            return
        self._close()
        now = asyncio.create_task(self._stop.now.wait())
        await asyncio.wait({running, now}, timeout=self._grace, return_when=asyncio.FIRST_COMPLETED)
        now.cancel()
        if not running.done():
            log.warning("stopping: cancelling the requests still in flight; they will be sent again by the next run")
            running.cancel()

    async def _all(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._feed())
            for _ in range(self._concurrency):
                group.create_task(self._work())

    async def _feed(self) -> None:
        iterator: Iterator[ManifestRow] = iter(self._rows)
        while not self._closing and (batch := await asyncio.to_thread(lambda: list(itertools.islice(iterator, READ_BATCH)))):
            for row in batch:
                if self._closing:
                    return
                await self._queue.put(row)
        if not self._closing:
            for _ in range(self._concurrency):
                await self._queue.put(None)

    def _close(self) -> None:
        """Drop the rows not yet started and wake every idle worker, so that only rows in flight remain."""
        self._closing = True
        while not self._queue.empty():
            self._queue.get_nowait()
        for _ in range(self._concurrency):
            self._queue.put_nowait(None)

    async def _next_ready(self) -> Ready | None:
        while (row := await self._queue.get()) is not None and not self._closing:
            if (ready := await self._prepare(row)) is not None:
                return ready
        return None

    async def _work(self) -> None:
        upcoming = asyncio.ensure_future(self._next_ready())
        try:
            while (ready := await upcoming) is not None and not self._closing:
                upcoming = asyncio.ensure_future(self._next_ready())
                await self._send(ready)  # type: ignore[misc]  # prepare-only pools finish every row in prepare
        finally:
            upcoming.cancel()
