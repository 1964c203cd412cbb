"""Provider-style rate limits for the simulator: requests and tokens per sliding window, and their headers.

A request is admitted only if it fits in both windows (requests per minute and
tokens per minute, the tokens being its prompt plus its max_tokens, counted up
front as OpenAI does). The window is exact: every admitted request is kept with
its time and token amount until it leaves the window, so the advised wait is
the precise moment the request would fit. Admission is a plain method with no
await inside, so on the event loop the check and the record are atomic.

Headers come in OpenAI's form (`x-ratelimit-remaining-requests: 4`,
`x-ratelimit-reset-requests: 1.5s`) or Anthropic's
(`anthropic-ratelimit-requests-reset: <RFC 3339 time>`); a limit that is off
sends no headers of its own.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

LIMIT_HEADER_FORMS = ("openai", "anthropic", "none")


def _ceil_ms(seconds: float) -> int:
    """Whole milliseconds, rounded up (never early), ignoring float noise such as 0.012 * 1000."""
    return max(0, math.ceil(round(seconds * 1000, 6)))


def format_duration(seconds: float) -> str:
    """OpenAI's reset form (Go's time.Duration): '12ms', '1s', '1.5s', '6m0s', '1h2m3.25s'; rounded up to 1 ms."""
    ms = _ceil_ms(seconds)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{hours}h" if hours else ""
    text += f"{minutes}m" if hours or minutes else ""
    return text + str(whole) + (f".{fraction:03d}".rstrip("0") if fraction else "") + "s"


def rfc3339(timestamp: float) -> str:
    """A UTC time like '2025-01-08T22:27:05.123Z', rounded up to 1 ms."""
    when = datetime.fromtimestamp(_ceil_ms(timestamp) / 1000, timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retry_headers(wait: float) -> dict[str, str]:
    """retry-after in seconds with millisecond precision ('0.734'), and retry-after-ms; both rounded up."""
    ms = _ceil_ms(wait)
    return {"retry-after": f"{ms / 1000:.3f}", "retry-after-ms": str(ms)}


@dataclass(frozen=True)
class Limits:
    """The limits in force for one request (settings may change between requests)."""

    rpm: int  # requests per window; 0 = off
    tpm: int  # tokens per window; 0 = off
    window: float = 60.0  # seconds
    header_form: str = "openai"  # one of LIMIT_HEADER_FORMS

    @property
    def on(self) -> bool:
        return bool(self.rpm or self.tpm)


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    wait: float  # seconds until the request would fit: 0 if admitted, inf if it never can
    limit: str | None  # "requests" or "tokens": the limit that refused it
    headers: dict[str, str]  # the limit headers after the decision


class SlidingWindow:
    """Admitted requests over the last `window` seconds. Not thread-safe: the server's loop owns it."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._requests: deque[float] = deque()  # admission times
        self._tokens: deque[tuple[float, int]] = deque()  # (admission time, tokens)
        self._used = 0  # sum of the amounts in _tokens

    def admit(self, tokens: int, limits: Limits, now: float | None = None) -> Verdict:
        """Admit and record the request if it fits in both windows; else say how long until it would."""
        now = time.monotonic() if now is None else now
        self._expire(limits.window, now)
        waits = {"requests": self._requests_wait(limits, now), "tokens": self._tokens_wait(tokens, limits, now)}
        limit = max(waits, key=lambda kind: waits[kind])
        if waits[limit] > 0:
            return Verdict(False, waits[limit], limit, self._headers(limits, now))
        self._requests.append(now)
        self._tokens.append((now, tokens))
        self._used += tokens
        return Verdict(True, 0.0, None, self._headers(limits, now))

    def peek(self, limits: Limits, now: float | None = None) -> dict[str, str]:
        """The limit headers as things stand, for answers given before admission (401, 400)."""
        if not limits.on:
            return {}
        now = time.monotonic() if now is None else now
        self._expire(limits.window, now)
        return self._headers(limits, now)

    def used(self) -> tuple[int, int]:
        """(requests, tokens) in the window as of the last call."""
        return len(self._requests), self._used

    def _expire(self, window: float, now: float) -> None:
        while self._requests and self._requests[0] + window <= now:
            self._requests.popleft()
        while self._tokens and self._tokens[0][0] + window <= now:
            self._used -= self._tokens.popleft()[1]

    def _requests_wait(self, limits: Limits, now: float) -> float:
        excess = len(self._requests) + 1 - limits.rpm
        if not limits.rpm or excess <= 0:
            return 0.0
        return self._requests[excess - 1] + limits.window - now  # when enough of the oldest have left

    def _tokens_wait(self, tokens: int, limits: Limits, now: float) -> float:
        if not limits.tpm:
            return 0.0
        if tokens > limits.tpm:
            return math.inf
        excess = self._used + tokens - limits.tpm
        if excess <= 0:
            return 0.0
        for admitted_at, amount in self._tokens:  # oldest first: when enough of them have left
            excess -= amount
            if excess <= 0:
                return admitted_at + limits.window - now
        raise AssertionError("unreachable: tokens <= tpm, so emptying the window makes room")

    def _headers(self, limits: Limits, now: float) -> dict[str, str]:
        if limits.header_form == "none":
            return {}
        kinds = []
        if limits.rpm:
            kinds.append(("requests", limits.rpm, len(self._requests), self._requests[0] if self._requests else None))
        if limits.tpm:
            kinds.append(("tokens", limits.tpm, self._used, self._tokens[0][0] if self._tokens else None))
        headers: dict[str, str] = {}
        for kind, limit, used, oldest in kinds:
            # The reset is when the window next frees room: when its oldest entry leaves.
            reset = 0.0 if oldest is None else max(0.0, oldest + limits.window - now)
            remaining = str(max(0, limit - used))
            # Providers state limits per minute; a shorter window (quick tests) is stated as its per-minute rate.
            per_minute = str(round(limit * 60 / limits.window))
            if limits.header_form == "anthropic":
                headers |= {f"anthropic-ratelimit-{kind}-limit": per_minute, f"anthropic-ratelimit-{kind}-remaining": remaining,
                            f"anthropic-ratelimit-{kind}-reset": rfc3339(time.time() + reset)}
            else:
                headers |= {f"x-ratelimit-limit-{kind}": per_minute, f"x-ratelimit-remaining-{kind}": remaining,
                            f"x-ratelimit-reset-{kind}": format_duration(reset)}
        return headers


def limit_error(verdict: Verdict, limits: Limits, tokens: int, model: str, used: tuple[int, int]) -> dict[str, Any]:
    """OpenAI's 429 body for a request over a limit ('type' is the limit's kind, as OpenAI sends it)."""
    kind = verdict.limit or "requests"
    per = "requests per min (RPM)" if kind == "requests" else "tokens per min (TPM)"
    limit, in_use, requested = (limits.rpm, used[0], 1) if kind == "requests" else (limits.tpm, used[1], tokens)
    if math.isinf(verdict.wait):
        message = (f"Request too large for {model} on {per}: Limit {limit}, Requested {requested}. "
                   "The input or output tokens must be reduced in order to run successfully.")
    else:
        message = (f"Rate limit reached for {model} on {per}: Limit {limit}, Used {in_use}, Requested {requested}. "
                   f"Please try again in {format_duration(verdict.wait)}.")
    return {"error": {"message": message, "type": kind, "param": None, "code": "rate_limit_exceeded"}}
