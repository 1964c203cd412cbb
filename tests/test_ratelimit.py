"""Rate limiter: pure tables, bucket arithmetic and the controller, all in virtual time.

`run_virtual` runs a coroutine on an event loop whose clock jumps straight to the
next timer instead of sleeping, so minutes of pacing take milliseconds and the
real `acquire()` (lock, sleeps, timeouts) is what gets tested.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
from collections import deque
from datetime import datetime, timezone

import pytest

from pipeline.estimate import estimate_tokens, image_tokens, provider_family
from pipeline.headers import LimitState, parse_duration, parse_limit_headers
from pipeline.ratelimit import RateLimiter, Ticket


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self, loop_ref: list):
        super().__init__()
        self._loop_ref = loop_ref

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("virtual-time deadlock: nothing scheduled and nothing ready")
        self._loop_ref[0].now += timeout  # time passes only when nothing else is ready
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self):
        ref: list = []
        super().__init__(_JumpingSelector(ref))
        ref.append(self)
        self.now = 0.0

    def time(self) -> float:
        return self.now


def run_virtual(make_coro):
    """Run `make_coro(loop)` to the end in virtual time; return its result."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(make_coro(loop))
    finally:
        loop.close()


# --- pure tables ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1.5s", 1.5),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("20", 20.0),
        ("0.25", 0.25),
        (" 7m12s ", 432.0),
        ("250us", 0.00025),
        ("", None),
        ("soon", None),
        ("5x", None),
        ("1s junk", None),
        ("-3", None),
        ("nan", None),
    ],
)
def test_parse_duration(text, seconds):
    got = parse_duration(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


NOW = datetime(2026, 11, 25, 20, 59, 30, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize(
    "headers, expected",
    [
        (
            {
                "x-ratelimit-limit-requests": "600",
                "x-ratelimit-remaining-requests": "599",
                "x-ratelimit-reset-requests": "100ms",
                "x-ratelimit-limit-tokens": "150000",
                "x-ratelimit-remaining-tokens": "149000",
                "x-ratelimit-reset-tokens": "1m0.4s",
            },
            LimitState(600, 599, 0.1, 150000, 149000, 60.4),
        ),
        (  # header names as the server spelled them; a bare number of seconds
            {"X-RateLimit-Remaining-Requests": "3", "X-RateLimit-Reset-Requests": "2"},
            LimitState(requests_remaining=3, requests_reset=2.0),
        ),
        (
            {
                "anthropic-ratelimit-requests-limit": "50",
                "anthropic-ratelimit-requests-remaining": "49",
                "anthropic-ratelimit-requests-reset": "2026-11-25T21:00:00Z",
                "anthropic-ratelimit-tokens-limit": "40000",
                "anthropic-ratelimit-tokens-remaining": "38000",
                "anthropic-ratelimit-tokens-reset": "2026-11-25T20:59:31.5+00:00",
            },
            LimitState(50, 49, 30.0, 40000, 38000, 1.5),
        ),
        (  # only the input-token family; a reset already past counts as 0
            {"anthropic-ratelimit-input-tokens-remaining": "900", "anthropic-ratelimit-input-tokens-reset": "2026-11-25T20:00:00Z"},
            LimitState(tokens_remaining=900, tokens_reset=0.0),
        ),
        ({"x-ratelimit-remaining-requests": "many", "x-ratelimit-reset-requests": "later"}, None),
        ({"x-ratelimit-remaining-tokens": "inf", "x-ratelimit-limit-tokens": "nan", "x-ratelimit-reset-tokens": "-1s"}, None),
        ({"anthropic-ratelimit-requests-reset": "2026-11-25T21:00:00"}, None),  # no time zone: unusable
        ({"content-type": "application/json"}, None),
    ],
)
def test_parse_limit_headers(headers, expected):
    assert parse_limit_headers(headers, NOW) == expected


@pytest.mark.parametrize(
    "size, detail, provider, tokens",
    [
        ((1000, 1000), None, "anthropic", 1334),  # ceil(1e6 / 750)
        ((200, 200), None, "anthropic", 54),
        ((3000, 2000), None, "anthropic", 1568),  # shrunk to ~1.15 MP first
        ((4000, 1000), None, "anthropic", 820),  # shrunk to a 1568 px long edge: 1568 x 392
        ((1024, 1024), "low", "openai", 85),
        ((4096, 4096), "low", "openai", 85),
        ((1024, 1024), "high", "openai", 765),  # OpenAI's example: 768 x 768, 4 tiles
        ((2048, 4096), "high", "openai", 1105),  # 1024 x 2048 -> 768 x 1536, 6 tiles
        ((4096, 8192), None, "openai", 1105),  # auto counts as high
        ((512, 512), "high", "openai", 255),  # never scaled up: 1 tile
    ],
)
def test_image_tokens(size, detail, provider, tokens):
    assert image_tokens(*size, detail=detail, provider=provider) == tokens


def test_estimate_tokens_adds_prompt_and_answer():
    assert estimate_tokens(1000, 1000, 0, 0, detail=None, provider="anthropic") == 1334
    assert estimate_tokens(1024, 1024, 401, 300, detail="low", provider="openai") == 85 + 101 + 300


@pytest.mark.parametrize(
    "model, family",
    [("claude-3-5-sonnet-20241022", "anthropic"), ("anthropic/claude-sonnet-4", "anthropic"), ("gpt-4o", "openai"), ("qwen2-vl", "openai")],
)
def test_provider_family(model, family):
    assert provider_family(model) == family


# --- buckets, FIFO, holds -----------------------------------------------------------


def test_requests_are_paced_at_rpm():
    async def go(loop):
        limiter = RateLimiter(rpm=120, clock=loop.time, margin=1.0)
        starts = []
        for _ in range(61):
            await limiter.acquire()
            starts.append(loop.time())
        return starts

    starts = run_virtual(go)
    assert starts[0] == 0.0  # the first one goes at once
    assert starts[-1] == pytest.approx(30.0)  # 60 more at 2 a second
    assert all(b - a == pytest.approx(0.5) for a, b in zip(starts[1:], starts[2:]))


def test_tokens_are_paced_at_tpm_and_reconcile_refunds_or_borrows():
    async def go(loop):
        limiter = RateLimiter(tpm=6000, clock=loop.time, margin=1.0)  # 100 tokens a second, burst 100
        await limiter.acquire(100)
        t0 = loop.time()
        await limiter.acquire(300)  # empty bucket: waits for 100 tokens, then owes 200
        t1 = loop.time()
        limiter.reconcile(300, 100)  # it used only 100: the debt is forgiven
        await limiter.acquire(100)
        t2 = loop.time()
        limiter.reconcile(100, 400)  # it used 400: 300 more owed
        await limiter.acquire(100)
        return t0, t1, t2, loop.time()

    t0, t1, t2, t3 = run_virtual(go)
    assert (t0, t1) == (0.0, pytest.approx(1.0))
    assert t2 == pytest.approx(2.0)  # just the refill for 100; no debt left
    assert t3 - t2 == pytest.approx(4.0)  # 300 of debt plus 100 for this one


def test_waiters_are_served_in_arrival_order():
    async def go(loop):
        limiter = RateLimiter(rpm=60, tpm=600, clock=loop.time)
        order = []

        async def one(i, tokens):
            await limiter.acquire(tokens)
            order.append(i)

        # A big request in the middle is not overtaken by the small ones behind it.
        sizes = [1, 1, 9, 1, 1, 1]
        async with asyncio.TaskGroup() as group:
            for i, size in enumerate(sizes):
                group.create_task(one(i, size))
                await asyncio.sleep(0)
        return order

    assert run_virtual(go) == [0, 1, 2, 3, 4, 5]


def test_a_429_holds_the_whole_pool_for_retry_after():
    async def go(loop):
        limiter = RateLimiter(clock=loop.time, gentle=False)  # no rpm: unconstrained until told otherwise
        tickets = [await limiter.acquire() for _ in range(12)]
        assert loop.time() == 0.0
        for ticket in tickets[:10]:
            limiter.on_response(200, ticket=ticket)
        limiter.on_response(429, retry_after=20, ticket=tickets[10])
        starts = []

        async def worker():
            await limiter.acquire()
            starts.append(loop.time())

        async with asyncio.TaskGroup() as group:
            for _ in range(4):
                group.create_task(worker())
        return starts, limiter

    starts, limiter = run_virtual(go)
    assert starts[0] == pytest.approx(20.0)  # nobody went during the hold
    # 10 accepted in the run's first second (less than a minute of history: measured over what there is), x 0.9
    assert limiter.rate == pytest.approx(0.9 * 10 / 1)
    assert starts[1:] == pytest.approx([20 + i / 9 for i in (1, 2, 3)])  # then paced at 9 per second


def test_429_without_retry_after_holds_briefly():
    async def go(loop):
        limiter = RateLimiter(rpm=6000, clock=loop.time)
        ticket = await limiter.acquire()
        limiter.on_response(429, ticket=ticket)
        await limiter.acquire()
        return loop.time()

    assert run_virtual(go) == pytest.approx(1.0)


def test_aimd_cuts_once_per_event_and_climbs_back_to_the_ceiling():
    clock = [0.0]
    limiter = RateLimiter(rpm=600, clock=lambda: clock[0])
    assert limiter.rate is None  # the bucket is the ceiling; nothing adaptive yet
    for i in range(300):  # 300 ok answers in the last minute: 5 requests a second
        clock[0] = i * 0.2
        limiter.on_response(200)
    sent_before = [Ticket(0, clock[0] - 0.5, waited=True, open=False) for _ in range(3)]
    limiter.on_response(429, retry_after=1, ticket=sent_before[0])
    for ticket in sent_before[1:]:  # same wave, sent before the cut: no second cut
        limiter.on_response(429, retry_after=1, ticket=ticket)
    assert limiter.rate is None  # the new rate is set when the hold ends
    clock[0] += 1
    assert limiter.delay() == pytest.approx(0.0)
    assert limiter.rate == pytest.approx(0.9 * 5)  # 0.9 x the 300 accepted in the minute before the 429
    climbed = 0
    while limiter.rate is not None:
        clock[0] += 0.2
        limiter.on_response(200)
        climbed += 1
    # +0.1 rpm per success: from 270 rpm back to the ceiling (600 rpm less the 1 % margin)
    assert climbed == pytest.approx((594 - 270) / 0.1, abs=2)


def test_low_remaining_header_paces_what_is_left_until_reset():
    async def go(loop):
        limiter = RateLimiter(clock=loop.time)
        ticket = await limiter.acquire()
        limiter.on_response(200, {"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "10s"}, ticket=ticket)
        starts = []
        for _ in range(3):
            await limiter.acquire()
            starts.append(loop.time())
        return starts

    # one request allowed per 10 s until the reset, then unlimited again
    assert run_virtual(go) == pytest.approx([0.0, 10.0, 10.0], abs=1e-6)


# --- simulation: a pool of workers against a provider with a sliding 60 s window ---


class SlidingWindowProvider:
    """Accepts at most `rpm` requests in any 60 s; a 429 says when the oldest one ages out."""

    def __init__(self, rpm: int, clock, *, headers: bool = False):
        self.rpm, self.clock, self.headers = rpm, clock, headers
        self.accepted: deque[float] = deque()

    def arrive(self) -> tuple[int, dict[str, str], float | None]:
        now = self.clock()
        while self.accepted and self.accepted[0] <= now - 60:
            self.accepted.popleft()
        if len(self.accepted) >= self.rpm:
            return 429, {}, float(math.ceil(self.accepted[0] + 60 - now))  # whole seconds, as servers send
        self.accepted.append(now)
        if not self.headers:
            return 200, {}, None
        reset = self.accepted[0] + 60 - now
        return 200, {"x-ratelimit-limit-requests": str(self.rpm), "x-ratelimit-remaining-requests": str(self.rpm - len(self.accepted)), "x-ratelimit-reset-requests": f"{reset:.3f}s"}, None


def simulate(requests, concurrency, provider_rpm, seed=1, *, headers=False, latency=(0.5, 3.0), reject_latency=(0.05, 0.2), **limits):
    """Run `requests` through `concurrency` workers; a 429 is retried after its Retry-After, through acquire().

    Returns (share of answers that were 429, last start / ideal, end of run / ideal), ideal = N / R.
    """
    rng = random.Random(seed)

    async def go(loop):
        limiter = RateLimiter(clock=loop.time, **limits)
        provider = SlidingWindowProvider(provider_rpm, loop.time, headers=headers)
        todo = iter(range(requests))
        counts = {200: 0, 429: 0}
        last_start = 0.0

        async def worker():
            nonlocal last_start
            for _ in todo:
                while True:
                    ticket = await limiter.acquire(1000)
                    last_start = max(last_start, ticket.granted_at)
                    await asyncio.sleep(rng.uniform(0.0, 0.05))  # on the way to the provider
                    status, answer_headers, retry_after = provider.arrive()
                    await asyncio.sleep(rng.uniform(*(reject_latency if status == 429 else latency)))
                    limiter.on_response(status, answer_headers, retry_after, ticket=ticket)
                    counts[status] += 1
                    if status != 429:
                        break
                    await asyncio.sleep(retry_after)  # what tenacity does with RateLimitError.retry_after

        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
        return counts, last_start, loop.time()

    counts, last_start, end = run_virtual(go)
    ideal = requests / provider_rpm * 60
    return counts[429] / (counts[200] + counts[429]), last_start / ideal, end / ideal


@pytest.mark.parametrize("requests, seed", [(300, 1), (1200, 1), (1200, 2), (3000, 3)])
def test_adaptive_finds_an_unknown_limit(requests, seed):
    rejected, last_start, end = simulate(requests, 32, 600, seed)
    assert rejected <= 0.05
    assert end <= 1.25


def test_adaptive_survives_slow_429s_and_a_big_pool():
    # Every 429 takes as long as an answer, 128 workers: more requests are in flight when the limit is hit.
    rejected, last_start, end = simulate(1800, 128, 600, reject_latency=(0.5, 3.0))
    assert rejected <= 0.05
    assert end <= 1.25


@pytest.mark.parametrize("requests", [300, 1200])
def test_given_rpm_is_held_without_429s(requests):
    rejected, last_start, end = simulate(requests, 32, 600, rpm=600)
    assert rejected <= 0.01
    assert last_start <= 1.05  # the last answer's own latency (up to 3 s) comes on top


def test_limit_headers_prevent_429s_without_rpm():
    rejected, last_start, end = simulate(1200, 32, 600, headers=True)
    assert rejected == 0
    assert last_start <= 1.05


def test_unknown_limits_start_with_one_request_then_open_on_the_answers_limit_headers():
    async def go(loop):
        limiter = RateLimiter(clock=loop.time, wall_clock=lambda: 0.0)
        first = await limiter.acquire()
        second = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(5)
        assert not second.done() and "starting gently" in limiter.holding()  # nothing more before an answer
        limiter.on_response(200, {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "599",
                                  "x-ratelimit-reset-requests": "100ms"}, ticket=first)
        starts = [(await second).granted_at]
        for _ in range(5):  # the window is open now: the announced 600 a minute paces them
            starts.append((await limiter.acquire()).granted_at)
        return starts

    starts = run_virtual(go)
    assert starts[0] == pytest.approx(5.0)
    assert [round(b - a, 3) for a, b in zip(starts, starts[1:])] == [round(60 / 594, 3)] * 5


def test_without_limit_headers_the_starting_window_grows_fourfold_per_answer():
    async def go(loop):
        limiter = RateLimiter(clock=loop.time)
        tickets = [await limiter.acquire()]
        limiter.on_response(200, ticket=tickets[0])  # no headers: 4 may be in flight
        tickets += [await limiter.acquire() for _ in range(4)]
        fifth = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(1)
        blocked = not fifth.done()
        limiter.on_response(200, ticket=tickets[1])  # 16 now
        await fifth
        for _ in range(12):  # 4 + 12 = 16 in flight, at once
            await limiter.acquire()
        return blocked, limiter.in_flight["requests"], loop.time()

    assert run_virtual(go) == (True, 16, 1.0)


def test_a_given_rpm_needs_no_gentle_start():
    async def go(loop):
        limiter = RateLimiter(rpm=60_000, clock=loop.time)
        for _ in range(20):
            await limiter.acquire()
        return loop.time()

    assert run_virtual(go) < 0.1


def test_the_progress_display_says_how_long_the_rate_has_been_holding_the_pool():
    async def go(loop):
        limiter = RateLimiter(rpm=60, clock=loop.time)  # one a second (0.99 with the margin)
        for _ in range(4):
            await limiter.acquire()
        waiting = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0.5)
        said = limiter.holding()
        await waiting
        return said, loop.time()

    said, _ = run_virtual(go)
    # Paced since the second request (t=0); the fourth went at 3 x 60/59.4 s, and half a second has passed since.
    assert said == "paced by the rate limit (59 requests/min) for 4 s"
