"""The retry policy is pure functions: tested as tables."""

import email.utils

import pytest

from pipeline.errors import (
    APIConnectionError,
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ImageMissingError,
    QuotaExhaustedError,
    RateLimitError,
    ServerError,
    status_error_class,
)
from pipeline.headers import retry_after_seconds
from pipeline.retry import backoff_seconds, should_retry

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # the precise one wins
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"retry-after": email.utils.formatdate(NOW + 7, usegmt=True)}, 7.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),  # a date in the past: go now
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers, now=NOW) == expected


def _status(status, **kw):
    return status_error_class(status, kw.get("code"))("x", status=status, **kw)


@pytest.mark.parametrize(
    "error, expected",
    [
        (_status(408), True),
        (_status(409), True),
        (_status(429), True),
        (_status(500), True),
        (_status(502), True),
        (_status(503), True),
        (_status(529), True),
        (_status(400), False),
        (_status(401), False),
        (_status(403), False),
        (_status(404), False),
        (_status(422), False),
        (_status(429, code="insufficient_quota"), False),
        (_status(400, should_retry=True), True),  # x-should-retry: true
        (_status(503, should_retry=False), False),  # x-should-retry: false
        (APIConnectionError("reset"), True),
        (APITimeoutError("slow"), True),
        (APIResponseError("not json"), True),
        (ImageMissingError("gone"), False),
        (ValueError("bug"), False),
    ],
)
def test_should_retry(error, expected):
    assert should_retry(error) is expected


@pytest.mark.parametrize(
    "code, cls",
    [(400, BadRequestError), (401, AuthenticationError), (403, AuthenticationError), (429, RateLimitError), (500, ServerError), (529, ServerError)],
)
def test_status_error_class(code, cls):
    assert status_error_class(code) is cls


def test_a_400_for_an_image_url_download_timeout_is_retried():
    cls = status_error_class(400, "invalid_image_url", "Timeout while downloading https://x/y.jpg.")
    assert should_retry(cls("x", status=400, code="invalid_image_url"))
    assert not should_retry(status_error_class(400, "invalid_image_url", "Invalid image URL")("x", status=400))


def test_a_429_for_an_empty_account_is_quota_exhausted():
    assert status_error_class(429, "insufficient_quota") is QuotaExhaustedError
    assert status_error_class(429, "rate_limit_exceeded") is RateLimitError


@pytest.mark.parametrize(
    "retry_number, retry_after, rng, expected",
    [
        (1, None, 1.0, 0.5),  # base * 2**0, full jitter at its top
        (2, None, 1.0, 1.0),
        (4, None, 1.0, 4.0),
        (4, None, 0.25, 1.0),
        (4, None, 0.0, 0.0),  # full jitter reaches zero
        (20, None, 1.0, 30.0),  # capped
        (3, 2.5, 0.0, 2.5),  # the server's advice wins
        (3, 0.0, 1.0, 0.0),
        (3, 3600.0, 1.0, 2.0),  # an absurd Retry-After falls back to our own backoff
    ],
)
def test_backoff_seconds(retry_number, retry_after, rng, expected):
    assert backoff_seconds(retry_number, retry_after, base=0.5, cap=30.0, rng=lambda: rng) == pytest.approx(expected)
