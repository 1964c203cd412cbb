"""The provider's edge: one POST, paced by the rate limiter, classified once into a Completion or a typed error.

Every answer body is read with a size cap, and masked of the key before any of it
is cut into a message. Provider and gateway dialects (LiteLLM's renamed headers,
Gemini's list-shaped errors with `retryDelay`, a flattened quota code) are
translated here, so the rest of the job sees one set of typed errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Mapping

import aiohttp

from .errors import (
    APIConnectionError,
    APIResponseError,
    APIStatusError,
    APITimeoutError,
    LongWaitError,
    QuotaExhaustedError,
    status_error_class,
)
from .ratelimit import RateLimiter, Ticket
from .records import Completion
from .response import MAX_ANSWER_BYTES, error_message, error_code, error_payload, parse_completion, snippet
from .headers import retry_after_seconds, retry_delay_from_body
from .secret import Secret
from .sse import read_completion

_HINTS = {
    401: "check the API key in the environment variable named by --api-key-env",
    402: "the account has no credits left: add credits at the provider, then rerun",
    403: "the key is not allowed to use this model or endpoint",
    404: "check --base-url (it usually ends in /v1) and --model",
}
_QUOTA_HINT = "the account's quota or credit is used up: check the plan and billing at the provider, then rerun"
MAX_ERROR_BYTES = 64 * 1024  # of an error body: enough for any message; the rest is not read
# A Retry-After longer than this is a quota window (hours, a day), not load: the run stops instead of holding.
LONG_WAIT = 300.0
_DRAIN_SECONDS = 2.0  # after [DONE], how long the end of a stream may take before the connection is dropped


class ChatClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: Secret | None,
        timeout: float,
        *,
        stall_timeout: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        limiter: RateLimiter | None = None,
        answer_tokens: int = 0,
    ):
        self._session = session
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", **(extra_headers or {})}
        self._mask = api_key.mask if api_key else (lambda text: text)
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key.reveal()}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.timeout_seconds = timeout
        self._stall_timeout = stall_timeout
        self._limiter = limiter or RateLimiter()  # with no limits given, it still learns from 429s and headers
        # Providers count max_tokens against a tokens-per-minute limit when the request starts, however
        # short the answer, so only the prompt part of the estimate is corrected by the real usage.
        self._answer_tokens = answer_tokens

    async def complete(self, body: bytes, *, stream: bool = False, tokens: int = 0) -> Completion:
        """Send one already-encoded request when the rate limiter allows; no retries here (see retry.RetryPolicy).

        `tokens` is the request's estimated cost, for the tokens-per-minute budget: prompt plus `answer_tokens`.
        """
        ticket = await self._limiter.acquire(tokens)
        try:
            completion = await self._send(body, stream, ticket)
        finally:
            self._limiter.release(ticket)  # no-op when an answer already closed the ticket
        prompt = completion.usage.get("prompt_tokens")
        if isinstance(prompt, int):
            self._limiter.reconcile(ticket.tokens, prompt + self._answer_tokens)
        return completion

    async def _send(self, body: bytes, stream: bool, ticket: Ticket) -> Completion:
        sent_at = time.monotonic()
        try:
            async with self._session.post(self.url, data=body, headers=self._headers, timeout=self._timeout) as response:
                if response.status != 200:
                    error = self._status_error(response, await _read_capped(response, MAX_ERROR_BYTES, cut=True))
                    self._limiter.on_response(response.status, response.headers, error.retry_after, ticket=ticket)
                    raise error
                self._limiter.on_response(200, response.headers, ticket=ticket)
                if stream:
                    completion, ttft = await read_completion(
                        response.content, stall_timeout=self._stall_timeout, started_at=sent_at, mask=self._mask
                    )
                    await _drain(response)
                    return dataclasses.replace(completion, time_to_first_token=ttft)
                raw = await _read_capped(response, MAX_ANSWER_BYTES)
        except asyncio.TimeoutError:
            raise APITimeoutError(f"no answer from {self.url} within {self.timeout_seconds:g} s (raise --timeout if the provider is slow)") from None
        except aiohttp.ClientError as e:
            raise APIConnectionError(self._mask(f"connection to {self.url} failed: {type(e).__name__}: {e}")) from None
        try:
            return parse_completion(raw)
        except APIResponseError as e:
            if type(e) is APIResponseError and raw:  # its message quotes the body: quote it masked
                masked = self._mask(raw.decode("utf-8", "replace")).encode()
                try:
                    parse_completion(masked)
                except APIResponseError as again:
                    raise again from None
            raise

    def _status_error(self, response: aiohttp.ClientResponse, raw: bytes) -> APIStatusError:
        masked = self._mask(raw.decode("utf-8", "replace"))  # before any of it is cut into a message
        payload = error_payload(masked.encode())
        message = error_message(payload) or snippet(masked)
        code = error_code(payload)
        status = response.status
        retry_after = retry_after_seconds(response.headers)
        if retry_after is None:
            retry_after = retry_delay_from_body(payload)
        cls = status_error_class(status, code, message)
        hint = _QUOTA_HINT if cls is QuotaExhaustedError else _HINTS.get(status)
        if code == "no_db_connection":
            hint = "a LiteLLM proxy without a database takes only its master key: check the key in --api-key-env's variable"
        if status in (429, 503) and retry_after is not None and retry_after > LONG_WAIT:
            cls = LongWaitError
            hint = (f"the provider asked to wait {_duration(retry_after)} (a daily or monthly quota, most likely): "
                    "the run stops rather than hold every worker; rerun after that")
        text = f"HTTP {status} from the provider: {message}" + (f" ({hint})" if hint else "")
        should_retry = response.headers.get("x-should-retry") or response.headers.get("llm_provider-x-should-retry")
        return cls(
            text,
            status=status,
            request_id=response.headers.get("x-request-id"),
            retry_after=retry_after,
            should_retry={"true": True, "false": False}.get((should_retry or "").lower()),
            code=code,
        )


async def _read_capped(response: aiohttp.ClientResponse, cap: int, *, cut: bool = False) -> bytes:
    """The body, at most `cap` bytes: past that, `cut` keeps the start (error bodies), else it is a bad_response."""
    if response.content_length is not None and response.content_length <= cap:
        return await response.read()
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            if cut:
                return b"".join(chunks)[:cap]
            raise APIResponseError(f"the provider's answer is larger than {cap:,} bytes: not a caption (a broken endpoint?)")
    return b"".join(chunks)


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read what follows [DONE] (usually only the end of the chunked body), so the connection goes back to the pool."""
    try:
        async with asyncio.timeout(_DRAIN_SECONDS):
            size = 0
            while chunk := await response.content.readany():
                size += len(chunk)
                if size > MAX_ERROR_BYTES:
                    break
    except (TimeoutError, aiohttp.ClientError):
        pass  # the connection is dropped instead of reused; the answer is already complete


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
