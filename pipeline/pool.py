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
from typing import Awaitable, Callable, Iterable, Iterator, TypeVar

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


async def run_pool(
    rows: Iterable[ManifestRow],
    prepare: Callable[[ManifestRow], Awaitable[Ready | None]],
    concurrency: int,
    progress: Progress,
    *,
    send: Callable[[Ready], Awaitable[None]] | None = None,
    stop: StopRequest | None = None,
    grace: float = 0.0,
) -> None:
    """Feed rows through a bounded queue to `concurrency` workers.

    `prepare` does a row's work before its request (None: the row is finished
    already, e.g. its image is unreadable); `send` does the rest. Each worker
    prepares its next row while its current request is in flight, so when an
    answer arrives the next request goes out at once: with many workers answered
    together, preparing on the way would delay every later worker's request
    (a worker holds at most two prepared requests).

    An exception in one worker stops them all. On a stop request no new row is
    started; rows in flight get `grace` seconds, then they are cancelled.
    """
    queue: asyncio.Queue[ManifestRow | None] = asyncio.Queue(maxsize=2 * concurrency)
    closing = False

    async def feed() -> None:
        iterator: Iterator[ManifestRow] = iter(rows)
        while not closing and (batch := await asyncio.to_thread(lambda: list(itertools.islice(iterator, READ_BATCH)))):
            for row in batch:
                if closing:
                    return
                await queue.put(row)
        if not closing:
            for _ in range(concurrency):
                await queue.put(None)

    def close() -> None:
        """Drop the rows not yet started and wake every idle worker, so that only rows in flight remain."""
        nonlocal closing
        closing = True
        while not queue.empty():
            queue.get_nowait()
        for _ in range(concurrency):
            queue.put_nowait(None)

    async def next_ready() -> Ready | None:
        while (row := await queue.get()) is not None and not closing:
            if (ready := await prepare(row)) is not None:
                return ready
        return None

    async def work() -> None:
        upcoming = asyncio.ensure_future(next_ready())
        try:
            while (ready := await upcoming) is not None and not closing:
                upcoming = asyncio.ensure_future(next_ready())
                await send(ready)
        finally:
            upcoming.cancel()

    async def pool() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(feed())
            for _ in range(concurrency):
                group.create_task(work())

    heartbeat = asyncio.create_task(progress.heartbeat())
    running = asyncio.create_task(pool())
    try:
        if stop is None:
            await running
            return
        requested = asyncio.create_task(stop.requested.wait())
        await asyncio.wait({running, requested}, return_when=asyncio.FIRST_COMPLETED)
        requested.cancel()
        if not running.done():
            close()
            now = asyncio.create_task(stop.now.wait())
            await asyncio.wait({running, now}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
            now.cancel()
            if not running.done():
                log.warning("stopping: cancelling the requests still in flight; they will be sent again by the next run")
                running.cancel()
        try:
            await running
        except asyncio.CancelledError:
            if not closing:
                raise
    finally:
        heartbeat.cancel()
        if not running.done():
            running.cancel()
