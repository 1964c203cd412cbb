"""The pieces of the simulator's answers, as pure functions: completions, error bodies, Retry-After headers."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, NoReturn

from aiohttp import web

from pipeline.simulator.request import BadRequest
from pipeline.simulator.settings import STATUS_ERRORS
from pipeline.simulator.vision import count_usage


def image_key(url: str) -> str:
    """How stats and fault_script identify an image: sha256 of its URL string."""
    return hashlib.sha256(url.encode()).hexdigest()


def retry_after_headers(seconds: float, form: str, now: float | None = None) -> dict[str, str]:
    if form == "seconds":
        return {"Retry-After": f"{seconds:.3f}".rstrip("0").rstrip(".")}
    if form == "http-date":
        # HTTP dates have whole seconds: round up so the advice is never in the past.
        when = math.ceil((time.time() if now is None else now) + seconds)
        return {"Retry-After": format_datetime(datetime.fromtimestamp(when, timezone.utc), usegmt=True)}
    if form == "ms":
        return {"retry-after-ms": str(round(seconds * 1000))}
    return {}


def error_body(message: str, type_: str, code: str | None, **more: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, **more, "code": code}}


async def drop_connection(request: web.BaseRequest) -> NoReturn:
    """Close the socket without an HTTP answer: the client sees a disconnect."""
    if request.transport is not None:
        request.transport.close()
    # connection_lost() cancels this handler (the runner has handler_cancellation on).
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def bad_request_response(exc: BadRequest, headers: dict[str, str]) -> web.Response:
    return web.json_response(error_body(exc.message, "invalid_request_error", exc.code, **exc.more), status=400, headers=headers)


def completion_body(n: int, model: str, caption: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-sim-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_sim",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": caption, "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": finish_reason}],
        "usage": {**usage, "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    }


def malformed_body(variant: str, n: int, model: str) -> str:
    if variant == "not_json":  # a body cut off mid-way
        return f'{{"id": "chatcmpl-sim-{n}", "object": "chat.completion", "choices": [{{"index": 0, "mess'
    if variant == "error_object":
        return json.dumps(error_body("The server had an error processing your request.", "server_error", None))
    completion = completion_body(n, model, "", "stop", count_usage(1, 1, [], ""))
    if variant == "no_choices":
        del completion["choices"]
    else:  # null_content
        completion["choices"][0]["message"]["content"] = None
    return json.dumps(completion)


def status_response(status: int, headers: dict[str, str], retry_after: float, form: str, model: str = "") -> web.Response:
    """A 4xx/5xx in OpenAI's shape; 429 and 503 advise a wait in the configured form."""
    if status == 429:
        type_, code = "rate_limit_error", "rate_limit_exceeded"
        message = (f"Rate limit reached for requests per min (RPM) on {model or 'this model'}. "
                   f"Please try again in {retry_after:g}s.")
    else:
        generic = ("server_error" if status >= 500 else "invalid_request_error", None, f"Simulated {status} error.")
        type_, code, message = STATUS_ERRORS.get(status, generic)
    if status in (429, 503):
        headers = {**headers, **retry_after_headers(retry_after, form)}
    return web.json_response(error_body(message, type_, code), status=status, headers=headers)
