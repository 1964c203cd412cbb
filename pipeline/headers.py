"""What a provider's answer headers (and a body, for Google) say about waiting: the one place they are read.

- `retry_after_seconds`: `retry-after-ms`, or `Retry-After` as seconds or an HTTP date;
  `retry_delay_from_body`: Google's RetryInfo in a JSON error body.
- `parse_limit_headers`: OpenAI's `x-ratelimit-*` and Anthropic's `anthropic-ratelimit-*`.
Each also in the `llm_provider-` form LiteLLM's proxy renames them to.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping


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


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|μs|ns)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}


def parse_duration(text: str) -> float | None:
    """'1h2m3.5s', '6m0s', '12ms', '1.5s' or a bare number of seconds -> seconds; None if unreadable."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            return None
        return sum(float(n) * _UNIT[u] for n, u in parts)
    return value if value >= 0 and math.isfinite(value) else None


def _reset_seconds(text: str, now: float) -> float | None:
    """A duration ('6m0s') or an RFC 3339 moment ('2026-11-25T21:00:00Z') -> seconds from `now`."""
    seconds = parse_duration(text)
    if seconds is None:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            return None
        seconds = None if moment.tzinfo is None else max(0.0, moment.timestamp() - now)
    return seconds


def _int(text: str, now: float) -> int | None:
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


@dataclass(frozen=True)
class LimitState:
    """What one answer said about the budget left; resets are seconds from that answer."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None


_PARSE = {"limit": _int, "remaining": _int, "reset": _reset_seconds}
# Anthropic may send only the input-token family.
_NAMES = {
    "requests": ("x-ratelimit-{}-requests", "anthropic-ratelimit-requests-{}"),
    "tokens": ("x-ratelimit-{}-tokens", "anthropic-ratelimit-tokens-{}", "anthropic-ratelimit-input-tokens-{}"),
}


def parse_limit_headers(headers: Mapping[str, str], now: float | None = None) -> LimitState | None:
    """OpenAI-style `x-ratelimit-*` or Anthropic `anthropic-ratelimit-*`; `now` is wall-clock time."""
    h = {k.lower(): v for k, v in headers.items()}
    for name in [k for k in h if k.startswith(GATEWAY_PREFIX)]:
        h.setdefault(name[len(GATEWAY_PREFIX):], h[name])
    now = time.time() if now is None else now
    fields: dict[str, float | int | None] = {}
    for kind, families in _HEADERS.items():
        family = next((names for names in families if any(name in h for name in names.values())), None)
        for part, parse in _PARSE.items():
            raw = h.get(family[part]) if family else None
            fields[f"{kind}_{part}"] = None if raw is None else parse(raw, now)
    return LimitState(**fields) if any(v is not None for v in fields.values()) else None


# kind -> one {part: header name} per family, formatted once: this runs on every answer.
_HEADERS = {kind: tuple({part: p.format(part) for part in _PARSE} for p in patterns) for kind, patterns in _NAMES.items()}
