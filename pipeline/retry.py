"""The retry policy as small pure functions; tenacity only executes it.

- what the server asked for is read by headers.py (`retry_after_seconds`);
- `should_retry`: which failures are worth another attempt.
- `backoff_seconds`: the server's advice when sane, else capped exponential
  backoff with full jitter (a random wait in [0, min(cap, base * 2**n)]), so that
  requests that failed together do not all come back at the same instant.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, TypeVar

if TYPE_CHECKING:
    from tenacity import RetryCallState


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

    def wait(self, state: "RetryCallState") -> float:
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
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt  # most runs never retry: not at start-up

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_retries),
            retry=retry_if_exception(should_retry),
            wait=self.wait,
            reraise=True,
        )
        return await retrying(attempt)
