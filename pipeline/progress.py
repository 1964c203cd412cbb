"""One object owns the run's counters and shows them: a tqdm bar on a terminal, a log line every few seconds otherwise.

Everything shown is about this run's work: the rows it will do (after those already done and
--limit), how fast it does them, and what is holding it back (a 429's Retry-After, the rate
limit's pace, rows waiting to retry).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable

from .cost import show_cost

log = logging.getLogger("pipeline")


@dataclass
class Counters:
    planned: int | None = None  # rows in the manifest: the most this run can do until the rows to do are counted
    limit: int | None = None
    total: int | None = None  # rows this run does, once counted (plan.py) or once the reader has seen them all
    done: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0  # HTTP attempts, retries included, counted as they start
    rows_sent: int = 0  # rows that made at least one request
    rate_limited: int = 0  # attempts answered 429
    waiting_to_retry: int = 0  # rows whose last attempt failed and whose next has not started
    skipped: int = 0  # rows the output already held (counted by the reader's thread)
    reused: int = 0  # rows answered by another row's answer: the same image asked the same way (dedupe.py)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def retries(self) -> int:
        return self.requests - self.rows_sent

    @property
    def to_do(self) -> int | None:
        """Rows this run does: exact once counted, else the most it can be (never fewer than there are)."""
        if self.total is not None:
            return self.total
        if self.planned is None:
            return None
        left = max(self.planned - self.skipped, self.done)
        return min(left, self.limit) if self.limit is not None else left

    @property
    def left(self) -> int | None:
        return None if self.to_do is None else max(self.to_do - self.done, 0)


class Progress:
    def __init__(
        self,
        planned: int | None,
        *,
        limit: int | None = None,
        unpriced: str | None = None,  # how to show cost when the model has no price (cost.unpriced_note)
        stream: IO[str] | None = None,
        interactive: bool | None = None,
        log_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.counters = Counters(planned=planned, limit=limit)
        self.unpriced = unpriced
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._log_every = log_every
        self._clock = clock
        self._started = clock()
        self._last_log = self._started
        self._holds: Callable[[], str | None] = lambda: None
        self._bar = None
        if self._interactive:  # imported here: cron runs never draw a bar (tqdm's import is ~45 ms)
            from tqdm import tqdm

            self._bar = tqdm(total=self.counters.to_do, file=self._stream, unit="row", dynamic_ncols=True, smoothing=0.1)

    def watch(self, holds: Callable[[], str | None]) -> None:
        """Ask `holds()` what, if anything, is holding requests back (RateLimiter.holding)."""
        self._holds = holds

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    # -- counting --------------------------------------------------------------

    def attempt_started(self, first: bool) -> None:
        c = self.counters
        c.requests += 1
        if first:
            c.rows_sent += 1
        else:
            c.waiting_to_retry -= 1

    def attempt_failed(self, status: int | None) -> None:
        """The attempt ended in an error: the row waits to retry, or gives up (`gave_up`)."""
        self.counters.waiting_to_retry += 1
        self.counters.rate_limited += status == 429

    def gave_up(self) -> None:
        self.counters.waiting_to_retry -= 1

    def record(self, row: dict[str, Any]) -> None:
        c = self.counters
        c.done += 1
        c.prompt_tokens += row.get("prompt_tokens") or 0
        c.completion_tokens += row.get("completion_tokens") or 0
        c.cost_usd += row.get("cost_usd") or 0.0
        c.reused += row.get("reused_from") is not None
        if row["status"] == "ok":
            c.ok += 1
        else:
            c.error += 1
            c.error_types[row["error_type"]] = c.error_types.get(row["error_type"], 0) + 1
        if self._bar is not None:
            self._bar.total = c.to_do
            self._bar.update(c.done - self._bar.n)
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    # -- showing ---------------------------------------------------------------

    @property
    def rows_per_second(self) -> float:
        return self.counters.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        left, rate = self.counters.left, self.rows_per_second
        if left is None or (left and not rate):
            return None
        return left / rate if left else 0.0

    def cost_text(self, amount: float | None = None) -> str:
        return show_cost(self.counters.cost_usd if amount is None else amount, self.unpriced)

    async def heartbeat(self) -> None:
        """Say where we are even when nothing finishes: the bar's waiting status every second, a log line every few."""
        while True:
            await asyncio.sleep(1.0 if self._interactive else self._log_every)
            if self._bar is not None:
                self._bar.total = self.counters.to_do
                self._bar.set_postfix_str(self._postfix(), refresh=True)
            elif self._clock() - self._last_log >= self._log_every:
                self.log_line()

    def snapshot(self) -> dict[str, Any]:
        """The numbers of a progress event, for the JSON log."""
        c, eta = self.counters, self.eta_seconds
        return {
            "done": c.done, "ok": c.ok, "error": c.error, "to_do": c.to_do, "left": c.left, "to_do_exact": c.total is not None,
            "already_done": c.skipped, "requests": c.requests, "retries": c.retries, "rate_limited": c.rate_limited,
            "waiting_to_retry": c.waiting_to_retry, "tokens": c.tokens, "cost_usd": None if self.unpriced else round(c.cost_usd, 6),
            "elapsed_s": round(self.elapsed, 1), "rows_per_s": round(self.rows_per_second, 3),
            "eta_s": None if eta is None else round(eta, 1), "waiting": self._waiting(),
        }

    def log_line(self) -> None:
        self._last_log = self._clock()
        c = self.counters
        of = "" if c.to_do is None else f"/{c.to_do}" if c.total is not None else f"/{c.to_do} at most"
        already = f", {c.skipped} done before" if c.skipped else ""
        waiting = self._waiting()
        log.info(
            "progress: %d%s rows (%d ok, %d error%s), %s elapsed, %.2f rows/s, ETA %s; %d requests (%d retries, %d rate-limited), "
            "%d tokens, cost %s%s",
            c.done, of, c.ok, c.error, already, duration(self.elapsed), self.rows_per_second, duration(self.eta_seconds),
            c.requests, c.retries, c.rate_limited, c.tokens, self.cost_text(), f"; waiting: {waiting}" if waiting else "",
            extra={"event": "progress", "progress": self.snapshot()},
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.total = self.counters.to_do
            self._bar.set_postfix_str(self._postfix(), refresh=True)
            self._bar.close()
            self._bar = None

    def _waiting(self) -> str | None:
        reasons = [r for r in (self._holds(),) if r]
        if self.counters.waiting_to_retry > 0:
            n = self.counters.waiting_to_retry
            reasons.append(f"{n} {'row' if n == 1 else 'rows'} waiting to retry")
        return "; ".join(reasons) or None

    def _postfix(self) -> str:
        c = self.counters
        parts = [f"ok={c.ok}", f"err={c.error}", f"req={c.requests}", f"retry={c.retries}", f"429={c.rate_limited}",
                 f"tok={c.tokens}", f"cost={self.cost_text()}"]
        if c.skipped:
            parts.append(f"done before={c.skipped}")
        if waiting := self._waiting():
            parts.append(f"waiting: {waiting}")
        return " ".join(parts)


def duration(seconds: float | None) -> str:
    """12s, 3m05s, 2h10m; "?" when unknown."""
    if seconds is None:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
