"""Limits that hold for the whole Ray cluster: one keeper, and a stand-in for it in every actor.

`LimitKeeper` runs as one Ray actor per run and owns the run's only RateLimiter (--rpm, --tpm, limit
headers, the adaptive control after 429s) and its --max-cost allowance. In each Captioner actor,
`SharedLimiter` takes the RateLimiter's place in the ChatClient: `acquire` asks the keeper for
permits, and what the client reports (answers, their headers and 429s, token corrections) goes back
to the keeper in small batches, so every actor's 429 slows every actor.

Permits come in small batches so that a permit is not a round trip: when one request waits, the
keeper grants it and, if the limit lets more go at once, up to MAX_STOCK more for other requests
of the same actor. An unused permit is handed back after STOCK_SECONDS, so a stock never turns
into a burst the limit did not allow.

The --max-cost allowance works the same way: an actor draws a share (`BudgetShare`), spends it
request by request through the local engine's own Budget, and hands back what is left after each
batch, so the whole cluster never commits more than the cap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Mapping

from .cost import Budget
from .ratelimit import RateLimiter, Ticket

MAX_STOCK = 64  # permits one grant may carry
STOCK_SECONDS = 0.25  # a permit unused for longer goes back: pacing, not bursts
FLUSH_SECONDS = 0.02  # how long reports wait to travel together
BEAT_SECONDS = 2.0  # an actor holding permits reports at least this often ...
SILENT_SECONDS = 10.0  # ... and one silent for this long is dead: its permits are freed
DUST_DOLLARS = 1e-9  # dollars: less is left of the --max-cost cap only by float rounding


class LimitKeeper:
    """The run's one rate limiter and cost allowance; a Ray actor (async: calls interleave on its loop)."""

    def __init__(self, rpm: float | None, tpm: float | None, max_cost: float | None):
        self.limiter = RateLimiter(rpm=rpm, tpm=tpm)
        self.max_cost, self.allotted = max_cost, 0.0
        # permit -> (ticket, holder). An actor that dies takes its permits' answers with it: they are freed when
        # Ray restarts it (`forget`), or once it has been silent for SILENT_SECONDS (SharedLimiter reports while it holds any).
        self.tickets: dict[int, tuple[Ticket, str]] = {}
        self.heard: dict[str, float] = {}  # holder -> when it last called
        self._sweeper: asyncio.Task | None = None
        self.ids = itertools.count(1)
        self.statuses: Counter[int] = Counter()
        # (reason, detail): the run takes no new rows. ("aborted", message), ("max-cost", worst case refused), ("SIGTERM", None)
        self.stopped: tuple[str, Any] | None = None

    async def grant(self, holder: str, want: int, tokens: int, reports: list[tuple]) -> tuple[list[int], bool]:
        """Wait for one permit, then take up to `want` - 1 more that may go now. (permit ids, stopped)"""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        self.report(holder, reports)
        ids = [self._take(await self.limiter.acquire(tokens), holder)]
        while len(ids) < want and self.limiter.delay(tokens) == 0:
            ids.append(self._take(await self.limiter.acquire(tokens), holder))
        self.heard[holder] = time.monotonic()  # it may have waited long: its permits are fresh
        return ids, self.stopped is not None

    def _take(self, ticket: Ticket, holder: str) -> int:
        permit = next(self.ids)
        self.tickets[permit] = (ticket, holder)
        return permit

    def _close(self, permit: int) -> Ticket | None:
        entry = self.tickets.pop(permit, None)
        return entry and entry[0]

    def forget(self, holder: str) -> None:
        """An actor (re)starts: what it held before it died will never be answered."""
        for permit in [p for p, (_, h) in self.tickets.items() if h == holder]:
            self.limiter.release(self._close(permit))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            silent = time.monotonic() - SILENT_SECONDS
            for holder in [h for h, at in self.heard.items() if at < silent]:
                del self.heard[holder]
                self.forget(holder)

    def report(self, holder: str, reports: list[tuple]) -> bool:
        """What an actor's client saw, in order; see SharedLimiter. Returns whether the run is stopping."""
        self.heard[holder] = time.monotonic()
        for kind, *args in reports:
            if kind == "answer":
                permit, status, headers, retry_after = args
                self.statuses[status] += 1
                self.limiter.on_response(status, headers, retry_after, ticket=self._close(permit))
            elif kind == "release":
                self.limiter.release(self._close(args[0]))
            elif kind == "reconcile":
                self.limiter.reconcile(*args)
        return self.stopped is not None

    def allow(self, amount: float) -> float:
        """Up to `amount` dollars of the --max-cost cap for one actor to commit (0 when nothing is left)."""
        if self.max_cost is None:
            return amount
        left = self.max_cost - self.allotted
        if left < DUST_DOLLARS:  # float dust is not money: granting it would never add up to a request
            return 0.0
        granted = min(amount, left)
        self.allotted += granted
        return granted

    def refund(self, amount: float) -> None:
        self.allotted = max(0.0, self.allotted - amount)

    def stop(self, reason: str, detail: Any = None) -> None:
        if self.stopped is None:
            self.stopped = (reason, detail)

    def state(self) -> dict[str, Any]:
        """For the driver's progress display and summary."""
        return {"rate_limited": self.statuses[429], "answers": sum(self.statuses.values()), "holding": self.limiter.holding(),
                "stopped": self.stopped, "allotted": self.allotted}


@dataclass
class SharedTicket(Ticket):
    permit: int = 0


class SharedLimiter:
    """In an actor, what the ChatClient takes for its RateLimiter: permits from the keeper, feedback to it."""

    def __init__(self, keeper: Any, holder: str):
        self.keeper, self.holder = keeper, holder
        self.stopped = False  # the keeper said the run takes no new rows (at the last contact)
        self._stock: deque[tuple[int, int, float]] = deque()  # (permit, tokens, received at)
        self._reports: list[tuple] = []
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._open = 0  # permits taken and not yet answered or released
        self._flushing: asyncio.Task | None = None
        self._beating: asyncio.Task | None = None

    async def acquire(self, tokens: int = 0) -> SharedTicket:
        self._waiting += 1
        try:
            async with self._lock:  # first come, first served, as in the RateLimiter
                self._expire()
                if not self._stock:
                    permits, self.stopped = await self.keeper.grant.remote(self.holder, min(self._waiting, MAX_STOCK), tokens,
                                                                           self._take_reports())
                    now = time.monotonic()
                    self._stock.extend((permit, tokens, now) for permit in permits)
                permit, granted_tokens, _ = self._stock.popleft()
                if granted_tokens != tokens:
                    self._reports.append(("reconcile", granted_tokens, tokens))
                self._open += 1
                if self._beating is None or self._beating.done():
                    self._beating = asyncio.get_running_loop().create_task(self._beat())
                return SharedTicket(tokens, time.monotonic(), waited=False, permit=permit)
        finally:
            self._waiting -= 1

    def _expire(self) -> None:
        now = time.monotonic()
        while self._stock and now - self._stock[0][2] > STOCK_SECONDS:
            self._reports.append(("release", self._stock.popleft()[0]))

    def release(self, ticket: SharedTicket | None) -> None:
        if ticket is not None and ticket.open:
            ticket.open = False
            self._open -= 1
            self._send_soon(("release", ticket.permit))

    def on_response(self, status: int, headers: Mapping[str, str] | None = None, retry_after: float | None = None, *,
                    ticket: SharedTicket | None = None) -> None:
        if ticket is None or not ticket.open:
            return
        ticket.open = False
        self._open -= 1
        limits = {k.lower(): v for k, v in headers.items() if "ratelimit" in k.lower()} if headers else None
        self._send_soon(("answer", ticket.permit, status, limits or None, retry_after))

    def reconcile(self, estimated: int, actual: int) -> None:
        if estimated != actual:
            self._send_soon(("reconcile", estimated, actual))

    def holding(self) -> str | None:
        return None  # the driver shows the keeper's

    def _take_reports(self) -> list[tuple]:
        reports, self._reports = self._reports, []
        return reports

    def _send_soon(self, report: tuple) -> None:
        self._reports.append(report)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)
        if self._reports:
            self.stopped = await self.keeper.report.remote(self.holder, self._take_reports())

    async def _beat(self) -> None:
        """While it holds permits: a sign of life (with any reports), so the keeper frees nothing of a live actor."""
        while self._open > 0 or self._stock:
            await asyncio.sleep(BEAT_SECONDS)
            self.stopped = await self.keeper.report.remote(self.holder, self._take_reports())

    async def close(self) -> None:
        """Hand back unused permits and send what is left to report (the end of a batch)."""
        while self._stock:
            self._reports.append(("release", self._stock.popleft()[0]))
        if self._reports:
            self.stopped = await self.keeper.report.remote(self.holder, self._take_reports())


class BudgetShare:
    """An actor's share of --max-cost: the local engine's Budget, whose limit is what the keeper allowed."""

    def __init__(self, keeper: Any, budget: Budget, per_actor: int):
        self.keeper, self.budget, self.per_actor = keeper, budget, per_actor
        budget.limit = 0.0

    async def ensure(self, worst_case: float) -> None:
        """Draw enough from the keeper for a request that may cost `worst_case`, and some for the next ones."""
        budget = self.budget
        # Looked at again after each wait: another batch's give_back may have handed back the room meanwhile.
        while (room := budget.limit - budget.spent - budget.reserved) < worst_case:
            asked = worst_case * self.per_actor - room + DUST_DOLLARS  # headroom for rounding: room + asked >= worst_case
            granted = await self.keeper.allow.remote(asked)
            budget.limit += granted  # not `limit += await ...`: that reads the limit before the wait
            if granted < asked:
                return  # the cap is reached: if the room is short, the Budget refuses the request and the run stops

    async def give_back(self) -> None:
        budget = self.budget
        left = budget.limit - budget.spent - budget.reserved
        if left > 0:
            budget.limit -= left
            await self.keeper.refund.remote(left)
