"""The retry policy as small pure functions; tenacity only executes it.

- `retry_after_seconds`: what the server asked for (`retry-after-ms`, or
  `Retry-After` as seconds or an HTTP date).
- `should_retry`: which failures are worth another attempt.
- `backoff_seconds`: the server's advice when sane, else capped exponential
  backoff with full jitter (a random wait in [0, min(cap, base * 2**n)]), so that
  requests that failed together do not all come back at the same instant.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from .errors import (
    AnswerError,
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    ImageURLTimeoutError,
    LongWaitError,
    QuotaExhaustedError,
)

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Longest server-advised wait we follow; past this we fall back to our own backoff.
MAX_RETRY_AFTER = 60.0


# LiteLLM's proxy passes the provider's headers on with this prefix (and drops the originals).
GATEWAY_PREFIX = "llm_provider-"


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None if it did not say (or said nonsense).

    `retry-after-ms`, then `Retry-After` (seconds or an HTTP date), each also in a gateway's `llm_provider-` form.
    """
    for prefix in ("", GATEWAY_PREFIX):
        value = _retry_after(headers, prefix, now)
        if value is not None:
            return value
    return None


def retry_delay_from_body(payload: Any) -> float | None:
    """Google's RetryInfo in an error body (Gemini's OpenAI layer sends no header): {"retryDelay": "7s"}."""
    if isinstance(payload, list):
        return next((d for d in map(retry_delay_from_body, payload) if d is not None), None)
    error = payload.get("error") if isinstance(payload, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                continue
            if seconds >= 0:
                return seconds
    return None


def _retry_after(headers: Mapping[str, str], prefix: str, now: float | None) -> float | None:
    ms = headers.get(prefix + "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000
        except ValueError:
            value = None
        if value is not None and value >= 0:
            return value
    raw = headers.get(prefix + "retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if _looks_like_date(raw) else None
        if parsed is None or parsed.tzinfo is None:
            return None
        value = parsed.timestamp() - (time.time() if now is None else now)
        return max(0.0, value)
    return value if value >= 0 else None


def _looks_like_date(raw: str) -> bool:
    try:
        return email.utils.parsedate_tz(raw) is not None
    except (TypeError, ValueError):
        return False


def should_retry(error: BaseException) -> bool:
    if isinstance(error, APIStatusError):
        if error.should_retry is not None:  # the server's own word wins (x-should-retry)
            return error.should_retry
        if isinstance(error, (QuotaExhaustedError, LongWaitError)):  # money or a quota window: waiting here will not help
            return False
        if isinstance(error, ImageURLTimeoutError):  # the provider's download timed out: another try may not
            return True
        return error.status in RETRYABLE_STATUSES or error.status >= 500
    if isinstance(error, AnswerError):  # an empty answer or a refusal: the same request gets the same
        return False
    return isinstance(error, (APIConnectionError, APITimeoutError, APIResponseError))


def backoff_seconds(
    retry_number: int,
    retry_after: float | None = None,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Wait before retry number `retry_number` (1 for the first retry)."""
    if retry_after is not None and 0 <= retry_after <= MAX_RETRY_AFTER:
        return retry_after
    return rng() * min(cap, base * 2 ** (retry_number - 1))


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 6
    base: float = 0.5
    cap: float = 30.0

    def wait(self, state: RetryCallState) -> float:
        # attempt_number counts from the second attempt: the first one ran before tenacity (see run).
        error = state.outcome.exception() if state.outcome else None
        return self._wait_after(error, state.attempt_number + 1)

    def _wait_after(self, error: BaseException | None, retry_number: int) -> float:
        return backoff_seconds(retry_number, getattr(error, "retry_after", None), base=self.base, cap=self.cap)

    async def run(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Call `attempt` until it succeeds, fails for good, or retries run out; re-raise the last error."""
        # Most requests succeed at once, and building tenacity's controller costs ~0.1 ms of the
        # event loop per call, on the way to every request; it starts only when a retry is due.
        try:
            return await attempt()
        except Exception as error:
            if self.max_retries == 0 or not should_retry(error):
                raise
            await asyncio.sleep(self._wait_after(error, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            retry=retry_if_exception(should_retry),
            wait=self.wait,
            reraise=True,
        )
        return await retrying(attempt)
