"""The worker pool: each worker prepares its next row while its request is in flight; stops and failures."""

import asyncio
import io

import pytest

from pipeline.pool import StopRequest, run_pool
from pipeline.progress import Progress
from pipeline.records import ManifestRow


def rows(n):
    return [ManifestRow(i, f"r{i}", f"{i}.png", f"/x/{i}.png") for i in range(1, n + 1)]


def progress():
    return Progress(None, stream=io.StringIO(), interactive=False)


def test_the_next_row_is_prepared_while_the_request_is_in_flight():
    events = []

    async def go():
        prepared = {}

        async def prepare(row):
            events.append(f"prepare {row.id}")
            prepared[row.id] = asyncio.Event()
            prepared[row.id].set()
            return row

        async def send(row):
            events.append(f"send {row.id}")
            following = f"r{row.line + 1}"
            if row.line < 3:
                # Without the prefetch the next row is prepared only after this returns: a deadlock, caught here.
                await asyncio.wait_for(_until(lambda: following in prepared), timeout=5)
            events.append(f"sent {row.id}")

        await run_pool(rows(3), prepare, 1, progress(), send=send)

    asyncio.run(go())
    assert events == ["prepare r1", "send r1", "prepare r2", "sent r1", "send r2", "prepare r3", "sent r2", "send r3", "sent r3"]


def test_rows_finished_by_prepare_are_not_sent_and_every_row_is_seen_once():
    prepared, sent = [], []

    async def prepare(row):
        prepared.append(row.id)
        return None if row.line % 3 == 0 else row  # every third row fails before its request

    async def send(row):
        await asyncio.sleep(0)
        sent.append(row.id)

    asyncio.run(run_pool(rows(30), prepare, 4, progress(), send=send))
    assert sorted(prepared) == sorted(r.id for r in rows(30))
    assert sorted(sent) == sorted(r.id for r in rows(30) if r.line % 3)


def test_after_a_stop_request_a_prepared_row_is_not_sent():
    sent = []

    async def go():
        stop = StopRequest()

        async def prepare(row):
            return row

        async def send(row):
            sent.append(row.id)
            if row.id == "r2":
                stop("max-cost")
            await asyncio.sleep(0.01)

        await run_pool(rows(10), prepare, 2, progress(), send=send, stop=stop, grace=5)

    asyncio.run(go())
    assert set(sent) == {"r1", "r2"}  # r3 and r4 were prepared (one per worker) when r2 stopped the run


def test_a_failing_send_stops_the_pool_and_cancels_the_prefetch():
    cancelled = []

    async def go():
        async def prepare(row):
            if row.line > 1:
                try:
                    await asyncio.sleep(30)  # a slow image: still loading when the send fails
                except asyncio.CancelledError:
                    cancelled.append(row.id)
                    raise
            return row

        async def send(row):
            await asyncio.sleep(0.05)  # r2 is being prepared meanwhile
            raise RuntimeError("boom")

        await asyncio.wait_for(run_pool(rows(5), prepare, 1, progress(), send=send), timeout=10)

    with pytest.raises(ExceptionGroup) as failure:
        asyncio.run(go())
    assert failure.group_contains(RuntimeError, match="boom")
    assert cancelled == ["r2"]


async def _until(condition):
    while not condition():
        await asyncio.sleep(0.001)
