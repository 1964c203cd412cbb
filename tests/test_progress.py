"""Progress tells the truth about this run: its rows to do, its rate and ETA, and what holds it back."""

import asyncio
import io
import json
import logging

import pytest

from pipeline.logs import setup_logging
from pipeline.progress import Counters, Progress, duration
from pipeline.ratelimit import RateLimiter


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rows_to_do_leave_out_those_already_done_and_respect_the_limit():
    c = Counters(planned=300)
    assert c.to_do == 300
    c.skipped = 274
    assert (c.to_do, c.left) == (26, 26)
    assert Counters(planned=55, limit=10).to_do == 10
    c.total, c.done = 20, 5  # counted exactly: that wins over the estimate
    assert (c.to_do, c.left) == (20, 15)


def test_rate_and_eta_count_only_this_runs_rows():
    clock = Clock()
    progress = Progress(300, stream=io.StringIO(), interactive=False, clock=clock)
    progress.counters.skipped = 274  # a resumed run: these cost nothing and go at once
    for _ in range(6):
        progress.record({"status": "ok"})
    clock.now += 5.0
    assert progress.rows_per_second == pytest.approx(1.2)
    assert progress.eta_seconds == pytest.approx(20 / 1.2)  # 20 left at 1.2 rows/s, not 2 s


def test_the_bar_counts_this_runs_rows_against_this_runs_total():
    stream = io.StringIO()
    progress = Progress(55, limit=10, stream=stream, interactive=True)
    for _ in range(10):
        progress.attempt_started(first=True)
        progress.record({"status": "ok", "prompt_tokens": 10, "completion_tokens": 5, "cost_usd": 0.001})
    progress.close()
    last = stream.getvalue().split("\r")[-1]
    assert "100%" in last and "10/10" in last and "ok=10" in last and "req=10" in last and "cost=$0.0100" in last


def test_the_log_line_says_elapsed_rate_eta_retries_429s_and_what_is_waiting():
    stream = io.StringIO()
    setup_logging("json", stream)
    clock = Clock()
    progress = Progress(100, stream=io.StringIO(), interactive=False, clock=clock)
    progress.watch(lambda: "held 3.0 s more after a 429 (Retry-After)")
    for _ in range(10):
        progress.attempt_started(first=True)
        progress.record({"status": "ok", "prompt_tokens": 100, "completion_tokens": 20, "cost_usd": 0.002})
    progress.attempt_started(first=True)
    progress.attempt_failed(429)
    clock.now += 10.0
    progress.log_line()
    event = json.loads(stream.getvalue())
    p = event["progress"]
    assert event["event"] == "progress" and event["time"].endswith("Z")
    assert (p["done"], p["to_do"], p["left"], p["requests"], p["rate_limited"], p["waiting_to_retry"]) == (10, 100, 90, 11, 1, 1)
    assert (p["elapsed_s"], p["rows_per_s"], p["eta_s"], p["tokens"], p["cost_usd"]) == (10.0, 1.0, 90.0, 1200, 0.02)
    assert p["waiting"] == "held 3.0 s more after a 429 (Retry-After); 1 row waiting to retry"
    assert "10s elapsed, 1.00 rows/s, ETA 1m30s" in event["message"] and "1 rate-limited" in event["message"]


def test_a_retry_that_starts_is_no_longer_waiting_and_a_row_that_gives_up_neither():
    progress = Progress(2, stream=io.StringIO(), interactive=False)
    progress.attempt_started(first=True)
    progress.attempt_failed(503)
    assert progress.counters.waiting_to_retry == 1
    progress.attempt_started(first=False)
    progress.attempt_failed(429)
    progress.gave_up()
    c = progress.counters
    assert (c.waiting_to_retry, c.requests, c.retries, c.rate_limited) == (0, 2, 1, 1)


def test_an_unpriced_model_shows_unknown_cost_not_zero():
    stream = io.StringIO()
    setup_logging("text", stream)
    progress = Progress(3, unpriced="unknown (no price for my-model in prices.toml)", stream=io.StringIO(), interactive=False)
    progress.record({"status": "ok", "cost_usd": None})
    progress.log_line()
    assert "cost unknown (no price for my-model in prices.toml)" in stream.getvalue()
    assert progress.snapshot()["cost_usd"] is None


def test_durations_read_like_a_person_writes_them():
    assert [duration(s) for s in (None, 4.4, 75, 7800)] == ["?", "4s", "1m15s", "2h10m"]


def test_the_limiter_says_when_a_429_holds_the_pool_and_when_the_rate_paces_it():
    async def go():
        clock = Clock()
        limiter = RateLimiter(rpm=60, clock=clock)
        assert limiter.holding() is None
        limiter.on_response(429, None, 4.0)
        assert limiter.holding() == "held 4.0 s more after a 429 (Retry-After)"
        clock.now += 5.0
        assert limiter.holding() is None
        limiter = RateLimiter(rpm=60)
        await limiter.acquire()
        waiting = asyncio.create_task(limiter.acquire())  # the bucket is empty: this one is paced
        await asyncio.sleep(0.01)
        held = limiter.holding()
        waiting.cancel()
        return held

    assert asyncio.run(go()) == "paced by the rate limit (59 requests/min) for 0 s"


def test_a_run_logs_its_plan_at_the_start_and_counts_its_429s(simulator, tmp_path, caption):
    from helpers import image_manifest

    manifest = image_manifest(tmp_path, 8)
    caption(manifest, limit=3)
    stream = io.StringIO()
    setup_logging("json", stream)
    simulator.configure(fault_script=["429", "ok"], retry_after=0.05)
    summary, _ = caption(manifest, limit=4)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    start = next(e for e in events if e.get("event") == "start")
    assert (start["plan"]["to_do"], start["plan"]["already_done"], start["plan"]["limit"]) == (4, 3, 4)
    assert start["options"]["limit"] == 4 and "api_key" not in start["options"]
    assert "sk-fixture-key" not in stream.getvalue()
    assert summary.rate_limited == simulator.stats()["by_status"]["429"] == 4  # each image's first request
    assert (summary.rows, summary.requests, summary.retries) == (4, 8, 4)
    logging.getLogger("pipeline").handlers.clear()


@pytest.mark.parametrize("room", [100, 2])
def test_a_resume_reads_its_manifest_once_unless_more_rows_are_left_than_the_read_ahead_holds(simulator, tmp_path, caption, monkeypatch, room):
    """The nightly case: a long manifest, mostly done. The reader's own pass is the plan; a second reader
    counts only when the rows left outnumber the read-ahead. Either way the plan is exact."""
    from helpers import image_manifest
    from pipeline import plan
    from pipeline.manifest import Manifest

    manifest = image_manifest(tmp_path, 12)
    caption(manifest, limit=7)
    second_readers = []
    real = Manifest.second_reader
    monkeypatch.setattr(Manifest, "second_reader", lambda self: second_readers.append(1) or real(self))
    monkeypatch.setattr(plan, "READ_AHEAD_ROWS", room)
    stream = io.StringIO()
    setup_logging("json", stream)
    summary, rows = caption(manifest)
    logging.getLogger("pipeline").handlers.clear()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    plans = [e["plan"] for e in events if e.get("event") in ("start", "plan") and e["plan"].get("to_do") is not None]
    assert plans and (plans[0]["to_do"], plans[0]["already_done"], plans[0]["rows"]) == (5, 7, 12)
    assert summary.ok == 5 and len(rows) == 12
    assert len(second_readers) == (0 if room == 100 else 1)
