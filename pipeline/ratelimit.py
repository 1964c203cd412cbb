"""Client-side rate limiting: as fast as the provider allows, and no faster.

One RateLimiter is shared by every worker. Before each attempt (the first one and
every retry) a worker awaits `acquire(estimated_tokens)`; after each HTTP answer the
client calls `on_response(status, headers, retry_after, ticket=...)`. Three things
decide when the next request may start:

- buckets for requests and tokens per second, from --rpm / --tpm (a ceiling);
- the provider's limit headers, read on every answer: when the remaining budget is
  low, what is left is spread over the time until it resets;
- an AIMD controller: a 429 holds the whole pool for the server's Retry-After and
  cuts the request rate to 0.9 x what the provider accepted over the last minute;
  every success that had to wait for the rate adds a little back (~+10 % a minute).

With no --rpm / --tpm, the start is gentle: one request alone, then as many as the limit headers
of its answer allow (without headers, four times as many per answer), not `concurrency` at once into
a limit nobody knows yet.

Waiters are served in arrival order: one asyncio.Lock (FIFO), and only the task at
its head sleeps, so a freed slot never wakes a herd.

Wiring, per attempt (tenacity's retries go through it too, so they are paced):

    ticket = await limiter.acquire(estimate)   # estimate_tokens(...) for this row
    ...send; no answer at all (timeout, connection error, cancel): limiter.release(ticket)
    limiter.on_response(status, headers, retry_after_seconds(headers), ticket=ticket)
    limiter.reconcile(ticket.tokens, usage.prompt_tokens + max_tokens)   # on 200; providers count max_tokens, not the answer
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from .headers import LimitState, parse_limit_headers

WINDOW = 60.0  # providers count per minute
# Pace at 99 % of a known limit: a request that reaches a sliding-window provider a few ms
# early would otherwise be its limit + 1st, and one 429 costs more than 1 % (a cut, then the climb back).
MARGIN = 0.99
MIN_RATE = 1 / WINDOW  # never below 1 rpm
SHALLOW_DECREASE = 0.97  # a 429 while paced at a known limit
DEFAULT_HOLD = 1.0  # pool hold after a 429 without Retry-After
MAX_HOLD = 60.0  # longer advice (a daily quota) is the retry policy's business, not a reason to stall the pool


# --- the limiter ----------------------------------------------------------------


class _Bucket:
    """`level` refills at `rate` per second up to `burst` and may go negative (debt); rate None = no limit."""

    def __init__(self, now: float):
        self.rate: float | None = None
        self.burst = self.level = 1.0
        self.stamp = now

    def refill(self, now: float) -> None:
        if self.rate is not None:
            self.level = min(self.burst, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def set_rate(self, rate: float | None, now: float) -> None:
        self.refill(now)
        self.rate, self.burst = rate, max(1.0, rate or 1.0)  # a burst of one second's worth
        self.level = min(self.level, self.burst)

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` may be taken; one larger than the burst goes when the bucket is full."""
        self.refill(now)
        need = min(amount, self.burst) - self.level
        if self.rate is None or need <= 0:
            return 0.0
        return need / self.rate if self.rate > 0 else math.inf

    def add(self, amount: float, now: float) -> None:
        self.refill(now)
        if self.rate is not None:  # unlimited: nothing to count
            self.level = min(self.burst, self.level + amount)


@dataclass
class Ticket:
    """One granted start; hand it back to `on_response` (an answer came) or `release` (none did)."""

    tokens: int
    granted_at: float
    waited: bool  # the limiter, not an idle pool, decided when it went
    open: bool = True


KINDS = ("requests", "tokens")


class RateLimiter:
    """Shared by all workers: `acquire` before every attempt, `on_response` after every answer."""

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,  # only to read RFC 3339 reset times
        decrease: float = 0.9,  # after a 429: rate = decrease x what the provider accepted in the minute before
        increase: float = 0.1,  # then each success adds `increase` rpm: +10 % a minute at any rate
        margin: float = MARGIN,
        gentle: bool = True,  # with unknown limits, start with one request in flight (see the module's docstring)
    ):
        if (rpm is not None and rpm <= 0) or (tpm is not None and tpm <= 0):
            raise ValueError("rpm and tpm must be positive")
        self.clock, self.wall_clock, self.margin = clock, wall_clock, margin
        self.decrease, self.increase = decrease, increase
        now = clock()
        self._started = now
        self._buckets = {kind: _Bucket(now) for kind in KINDS}
        self._ceiling = {"requests": rpm and rpm * margin / WINDOW, "tokens": tpm and tpm * margin / WINDOW}
        self._limit: dict[str, float | None] = dict.fromkeys(KINDS)  # from x-ratelimit-limit-*, per second
        self._gate: dict[str, tuple[float, float] | None] = dict.fromkeys(KINDS)  # (rate, until) from remaining/reset
        self.rate: float | None = None  # the adaptive request rate; None until a 429 gives one
        self.hold_until = self._last_cut = -math.inf
        self._pending_cut: tuple[float, float | None] | None = None  # (when, rate before)
        self._accepted: deque[float] = deque()  # grant times of answered-ok requests, last two minutes
        self.in_flight = dict.fromkeys(KINDS, 0)
        self.peak = dict.fromkeys(KINDS, 0)
        self.granted = dict.fromkeys(KINDS, 0)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._pacing = False  # the task at the head of the queue is asleep until the rate lets it go
        self._paced_since: float | None = None  # since when every request has had to wait (for the progress display)
        # Unknown limits: start gently. One request goes alone; an answer with limit headers tells the
        # buckets what to pace at (then any number may be in flight), one without quadruples the window:
        # a self-hosted server with no limits is at full concurrency within two round trips.
        self._window: float | None = 1.0 if gentle and not (rpm or tpm) else None
        self._update(now)
        self._buckets["tokens"].level = self._buckets["tokens"].burst

    # -- waiting ---------------------------------------------------------------

    def delay(self, tokens: int = 0) -> float:
        """Seconds before a request of `tokens` may start (0 = now); takes nothing."""
        now = self.clock()
        for kind, gate in self._gate.items():
            if gate and now >= gate[1]:
                self._gate[kind] = None
                self._update(now)
        if self._pending_cut and now >= self.hold_until:
            self._cut(now)
        if self._window is not None and self.in_flight["requests"] >= self._window:
            return math.inf  # until an answer comes
        seconds = max(self.hold_until - now, self._buckets["requests"].wait(1, now), self._buckets["tokens"].wait(tokens, now))
        return seconds if seconds > 1e-9 else 0.0  # not float rounding

    async def acquire(self, tokens: int = 0) -> Ticket:
        """Wait, first come first served, until one request of `tokens` may start; take it."""
        waited = False
        async with self._lock:
            while (seconds := self.delay(tokens)) > 0:
                if self._paced_since is None:
                    self._paced_since = self.clock()
                waited = self._pacing = True
                self._changed.clear()
                try:  # sleep, but look again early if an answer changes the picture
                    async with asyncio.timeout(None if math.isinf(seconds) else seconds):
                        await self._changed.wait()
                except TimeoutError:
                    pass
                finally:
                    self._pacing = False
            now = self.clock()
            if not waited:
                self._paced_since = None
            for kind, amount in zip(KINDS, (1, tokens)):
                self._buckets[kind].add(-amount, now)
                self.in_flight[kind] += amount
                self.granted[kind] += amount
                self.peak[kind] = max(self.peak[kind], self.in_flight[kind])
            return Ticket(tokens, now, waited)

    def holding(self) -> str | None:
        """What holds requests back right now, in words for the progress display; None when nothing does."""
        now = self.clock()
        if now < self.hold_until:
            return f"held {self.hold_until - now:.1f} s more after a 429 (Retry-After)"
        if not self._pacing:
            return None
        if self._window is not None and self.in_flight["requests"] >= self._window:
            return f"starting gently: {self.in_flight['requests']} in flight until the provider's limits are known"
        rate = self._buckets["requests"].rate
        what = f"the rate limit ({rate * WINDOW:.0f} requests/min)" if rate else "the tokens-per-minute limit"
        since = now - self._paced_since if self._paced_since is not None else 0.0
        return f"paced by {what} for {since:.0f} s"

    def release(self, ticket: Ticket | None) -> None:
        """The attempt ended without an answer (connection error, timeout, cancel). Idempotent."""
        if ticket is not None and ticket.open:
            ticket.open = False
            self.in_flight["requests"] -= 1
            self.in_flight["tokens"] -= ticket.tokens
            self._changed.set()  # a slot of the starting window is free

    def reconcile(self, estimated: int, actual: int) -> None:
        """Real usage is known: refund an overestimate, or take the shortfall (the bucket may go into debt)."""
        self._buckets["tokens"].add(estimated - actual, self.clock())
        self._changed.set()

    # -- feedback --------------------------------------------------------------

    def on_response(
        self, status: int, headers: Mapping[str, str] | None = None, retry_after: float | None = None, *, ticket: Ticket | None = None
    ) -> None:
        """Every HTTP answer, ok or not; `retry_after` as the server gave it (retry.retry_after_seconds)."""
        now = self.clock()
        self.release(ticket)
        state = parse_limit_headers(headers, self.wall_clock()) if headers else None
        if state is not None:
            self._apply(state, now)
        if self._window is not None:
            if state is not None or status == 429:  # the limits are known, or found: the buckets and holds take over
                self._window = None
            elif 200 <= status < 300:
                self._window = None if self._window >= 256 else 4 * self._window
        if status == 429:
            self._on_429(now, retry_after, ticket)
        elif 200 <= status < 300:
            self._on_success(now, ticket)
        self._changed.set()

    def _on_429(self, now: float, retry_after: float | None, ticket: Ticket | None) -> None:
        held = now < self.hold_until
        hold = DEFAULT_HOLD if retry_after is None else min(max(retry_after, 0.0), MAX_HOLD)
        self.hold_until = max(self.hold_until, now + hold)
        # One cut per congestion event: requests sent before the last cut were sent at the old rate.
        if (ticket.granted_at <= self._last_cut) if ticket is not None else held:
            return
        self._last_cut = now
        # The new rate is set when the hold ends: by then the requests sent just before the 429 have
        # answered, so what the provider accepted in the minute before it said no is known.
        self._pending_cut = (now, self._known_rate("requests"))

    def _cut(self, now: float) -> None:
        cut_at, before = self._pending_cut
        self._pending_cut = None
        # Over the minute before the 429 or, early in a run, over what there is of it: a stray 429 in
        # the first seconds (overload, not a limit) must not cut the rate to the handful of requests
        # that had been sent so far. A real limit hit that early cuts again on its next 429.
        span = min(WINDOW, max(1.0, cut_at - self._started))
        accepted = sum(cut_at - span < t <= cut_at for t in self._accepted) / span
        known = [r for r in (accepted, before) if r]
        if known:  # else nothing to go on: the holds alone protect the provider
            # Paced at a limit the provider announced (or --rpm) and refused anyway: a window shorter than a
            # minute caught a few ms of jitter, not a wrong limit. A shallow cut, or the rest of the run pays 10 %.
            at_known_limit = self.rate is None and before is not None and accepted >= 0.9 * before
            self.rate = max(MIN_RATE, (SHALLOW_DECREASE if at_known_limit else self.decrease) * min(known))
        self._update(now)
        self._buckets["requests"].level = 1.0  # nothing was saved up during the hold: one goes now, then the pace

    def _on_success(self, now: float, ticket: Ticket | None) -> None:
        self._accepted.append(ticket.granted_at if ticket else now)
        while self._accepted[0] <= now - 2 * WINDOW:
            self._accepted.popleft()
        # Climb only while the rate is what holds requests back, and not on answers to requests sent before the cut.
        if self.rate is not None and (ticket is None or (ticket.waited and ticket.granted_at > self._last_cut)):
            self.rate += self.increase / WINDOW
            ceiling = min((r for r in (self._ceiling["requests"], self._limit["requests"]) if r), default=None)
            if ceiling is not None and self.rate >= ceiling:
                self.rate = None  # back at the ceiling: the bucket rules again
            self._update(now)

    def _apply(self, state: LimitState, now: float) -> None:
        for kind in KINDS:
            limit, remaining, reset = (getattr(state, f"{kind}_{part}") for part in ("limit", "remaining", "reset"))
            if limit:
                self._limit[kind] = limit * self.margin / WINDOW
            if remaining is None or not reset:
                continue
            budget = remaining - self.in_flight[kind]  # what is in flight will spend some of it
            if budget >= 2 * max(self.peak[kind], 1):
                self._gate[kind] = None
            else:  # low: spread what is left over the time until the reset, at least one request's worth
                one = 1.0 if kind == "requests" else self.granted["tokens"] / max(self.granted["requests"], 1)
                self._gate[kind] = (max(budget, one, 1.0) / reset, now + reset)
        self._update(now)

    # -- rates -----------------------------------------------------------------

    def _known_rate(self, kind: str) -> float | None:
        adaptive = self.rate if kind == "requests" else None
        return min((r for r in (self._ceiling[kind], self._limit[kind], adaptive) if r is not None), default=None)

    def _update(self, now: float) -> None:
        for kind in KINDS:
            gate = self._gate[kind]
            rate = min((r for r in (self._known_rate(kind), gate and gate[0]) if r is not None), default=None)
            self._buckets[kind].set_rate(rate, now)
