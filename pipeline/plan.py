"""What this run will do: the rows to do after resume and --limit, counted on a second reader, and the start event.

The count runs in a thread beside the run (it reads the manifest and asks the resume index, like
the reader does, but builds no rows). The start event waits for it at most WAIT_FOR_COUNT: a small
manifest is counted by then (10,000 CSV rows take ~55 ms) and the event carries the exact plan; a
large one is counted while the run goes, and the plan is logged when it is known.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import asdict, dataclass
from typing import Callable

from .config import JobConfig
from .manifest import Manifest
from .progress import Progress

log = logging.getLogger("pipeline")

IsDone = Callable[[str, "str | None", str], bool]  # (id, prompt, source) -> already in the output
WAIT_FOR_COUNT = 0.25  # seconds the first request may wait for an exact count in the start event


@dataclass(frozen=True)
class Plan:
    to_do: int  # rows this run will send or fail (after --limit)
    already_done: int
    duplicates: int
    rows: int  # distinct ids in the manifest


def count_plan(manifest: Manifest, is_done: IsDone | None, limit: int | None, cancelled: threading.Event) -> Plan | None:
    """Read the manifest once on its own reader; None when cancelled or when it cannot be read (the run will say why)."""
    reader = manifest.second_reader()
    already = 0

    def skip(row_id: str, prompt: str | None, source: str) -> bool:
        nonlocal already
        if cancelled.is_set():
            raise _Cancelled
        if is_done is not None and is_done(row_id, prompt, source):
            already += 1
            return True
        return False

    try:
        left = sum(1 for _ in reader.rows(skip=skip))
    except Exception:  # noqa: BLE001 - _Cancelled, or a manifest error the run itself reports
        return None
    return Plan(min(left, limit) if limit is not None else left, already, reader.stats.duplicates, reader.stats.rows)


class _Cancelled(Exception):
    pass


class PlanCount:
    """The count, running in a thread; `stop()` when the run ends before it does."""

    def __init__(self, manifest: Manifest, is_done: IsDone | None, limit: int | None):
        self._cancelled = threading.Event()
        self.future = asyncio.ensure_future(asyncio.to_thread(count_plan, manifest, is_done, limit, self._cancelled))

    def stop(self) -> None:
        self._cancelled.set()


async def start(config: JobConfig, manifest: Manifest, is_done: IsDone | None, progress: Progress, rows_in_output: int) -> PlanCount:
    """Start counting the plan and log the start event, with the plan when it is counted within WAIT_FOR_COUNT."""
    count = PlanCount(manifest, is_done, config.limit)
    done, _ = await asyncio.wait({count.future}, timeout=WAIT_FOR_COUNT)
    plan = count.future.result() if done else None
    if plan is not None:
        progress.counters.total = plan.to_do
    what = f"{plan.to_do} rows to do" if plan else f"up to {progress.counters.to_do} rows to do (still counting)"
    already = f", {plan.already_done} already done" if plan else f", {rows_in_output} rows already in the output" if rows_in_output else ""
    limit = f", --limit {config.limit}" if config.limit is not None else ""
    into = f" -> {config.output}" if plan is None or plan.to_do else ""  # name no file that will not be written
    log.info(
        "start: %s%s%s; %s%s; model %s at %s, concurrency %d",
        what, already, limit, manifest.path, into, config.model, config.base_url, config.concurrency,
        extra={"event": "start", "plan": {**(asdict(plan) if plan else {"to_do": None, "counting": True}),
                                          "manifest_rows_at_most": manifest.count(), "rows_in_output": rows_in_output,
                                          "limit": config.limit},
               "options": config.public_options()},
    )
    if plan is None:
        count.future.add_done_callback(lambda f: _counted(f, progress))
    return count


def _counted(counting: asyncio.Future, progress: Progress) -> None:
    plan = None if counting.cancelled() or counting.exception() else counting.result()
    if plan is None:
        return
    if progress.counters.total is None:
        progress.counters.total = plan.to_do
    log.info("plan: %d rows to do, %d already done", plan.to_do, plan.already_done, extra={"event": "plan", "plan": asdict(plan)})
