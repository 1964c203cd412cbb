"""The only module that talks to the provider: one POST, paced by the rate limiter, classified once into a Completion or a typed error."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Mapping

import aiohttp

from .config import Secret
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    status_error_class,
)
from .ratelimit import RateLimiter, Ticket
from .records import Completion
from .response import parse_completion, parse_error_body
from .retry import retry_after_seconds
from .sse import read_completion

_HINTS = {
    401: "check the API key in the environment variable named by --api-key-env",
    403: "the key is not allowed to use this model or endpoint",
    404: "check --base-url (it should end in /v1) and --model",
}


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
                    error = self._status_error(response, await response.read())
                    self._limiter.on_response(response.status, response.headers, error.retry_after, ticket=ticket)
                    raise error
                self._limiter.on_response(200, response.headers, ticket=ticket)
                if stream:
                    completion, ttft = await read_completion(response.content, stall_timeout=self._stall_timeout, started_at=sent_at)
                    return dataclasses.replace(completion, time_to_first_token=ttft)
                raw = await response.read()
        except asyncio.TimeoutError:
            raise APITimeoutError(f"no answer from {self.url} within {self.timeout_seconds:g} s (raise --timeout if the provider is slow)") from None
        except aiohttp.ClientError as e:
            raise APIConnectionError(f"connection to {self.url} failed: {type(e).__name__}: {e}") from None
        return parse_completion(raw)

    def _status_error(self, response: aiohttp.ClientResponse, raw: bytes) -> APIStatusError:
        message, code = parse_error_body(raw)
        hint = _HINTS.get(response.status)
        text = f"HTTP {response.status} from the provider: {message}" + (f" ({hint})" if hint else "")
        should_retry = response.headers.get("x-should-retry")
        return status_error_class(response.status, code, message)(
            text,
            status=response.status,
            request_id=response.headers.get("x-request-id"),
            retry_after=retry_after_seconds(response.headers),
            should_retry={"true": True, "false": False}.get((should_retry or "").lower()),
            code=code,
        )
