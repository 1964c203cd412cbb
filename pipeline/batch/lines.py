"""A batch's lines both ways: a prepared row as an OpenAI or Anthropic request line, a result line as an answer.

Requests: OpenAI's line wraps the online request body byte for byte (the image's base64 is spliced, never
re-encoded); Anthropic's carries the same prompt, system and image as a Messages API body. Results go
through the online parser (response.py) and error classes (errors.py), so a row answered in a batch
is judged by the same rule as one answered online.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config import JobConfig
from ..errors import APIError, APIResponseError, status_error_class
from ..records import Completion
from ..request import encode_body
from ..response import answer, error_code, error_message, parse_completion, snippet

OPENAI_ENDPOINT = "/v1/chat/completions"
# Lines the provider did not run (the batch expired or was cancelled first): the row is to do again.
NOT_RUN_CODES = frozenset({"batch_expired", "batch_cancelled", "batch_canceled"})
_STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class BatchLineError(APIError):
    """A line the provider answered with an error of its own, without an HTTP status."""

    error_type = "batch_error"


@dataclass(frozen=True, slots=True)
class LineResult:
    custom_id: str
    completion: Completion | None = None
    error: APIError | None = None  # neither: the line was not run, and its row is to do again


def openai_line(custom_id: str, body: bytes) -> bytes:
    return b"".join((b'{"custom_id":', json.dumps(custom_id).encode(), b',"method":"POST","url":"', OPENAI_ENDPOINT.encode(),
                     b'","body":', body, b"}\n"))


def anthropic_line(custom_id: str, config: JobConfig, prompt: str, image_url: str | bytes) -> bytes:
    """A Message Batches request: {"custom_id", "params": a Messages API body with the same prompt and image}."""
    slot = "image-data-slot"
    if isinstance(image_url, bytes):  # data:<mime>;base64,<data>: spliced, as online
        head, _, data = image_url.partition(b",")
        source: dict[str, Any] = {"type": "base64", "media_type": head[5:].split(b";")[0].decode(), "data": slot}
    else:
        source, data = {"type": "url", "url": image_url}, b""
    params: dict[str, Any] = {"model": config.model, "max_tokens": config.max_tokens,
                              "messages": [{"role": "user", "content": [{"type": "text", "text": prompt},
                                                                        {"type": "image", "source": source}]}]}
    if config.system:
        params["system"] = config.system
    if config.temperature is not None:
        params["temperature"] = config.temperature
    encoded = encode_body({"custom_id": custom_id, "params": params})
    if data:
        before, _, after = encoded.rpartition(f'"{slot}"'.encode())
        encoded = b"".join((before, b'"', data, b'"', after))
    return encoded + b"\n"


def parse_openai_result(raw: bytes) -> LineResult:
    """A line of an output or error file: {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}."""
    line = json.loads(raw)
    custom_id = str(line["custom_id"])
    response = line.get("response") if isinstance(line.get("response"), dict) else None
    error = line.get("error") if isinstance(line.get("error"), dict) else None
    if response is not None and response.get("status_code") == 200:
        try:
            return LineResult(custom_id, completion=parse_completion(json.dumps(response.get("body")).encode()))
        except APIResponseError as e:
            return LineResult(custom_id, error=e)
    if response is not None and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        message, code = error_message(body) or snippet(json.dumps(body)), error_code(body)
        cls = status_error_class(status, code, message)
        return LineResult(custom_id, error=cls(f"HTTP {status} in the batch: {message}", status=status,
                                               request_id=response.get("request_id"), code=code))
    if error is not None and error.get("code") in NOT_RUN_CODES:
        return LineResult(custom_id)
    why = (error or {}).get("message") or "the batch line has neither a response nor an error"
    return LineResult(custom_id, error=BatchLineError(f"the batch could not run this request: {why} ({(error or {}).get('code')})"))


def parse_anthropic_result(raw: bytes) -> LineResult:
    """A line of a Message Batch's results: {"custom_id", "result": {"type": succeeded|errored|canceled|expired, ...}}."""
    line = json.loads(raw)
    custom_id = str(line["custom_id"])
    result = line.get("result") if isinstance(line.get("result"), dict) else {}
    kind = result.get("type")
    if kind == "succeeded":
        message = result.get("message") or {}
        text = "".join(block.get("text", "") for block in message.get("content") or [] if block.get("type") == "text")
        usage = message.get("usage") if isinstance(message.get("usage"), dict) else {}
        try:
            return LineResult(custom_id, completion=answer(text, finish_reason=_STOP_REASONS.get(message.get("stop_reason"), message.get("stop_reason")),
                                                           model=message.get("model"), response_id=message.get("id"), usage=usage))
        except APIResponseError as e:
            return LineResult(custom_id, error=e)
    if kind == "errored":
        error = (result.get("error") or {}).get("error") or {}
        status = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403, "not_found_error": 404,
                  "rate_limit_error": 429, "api_error": 500, "overloaded_error": 529}.get(error.get("type"))
        message = error.get("message") or "no message"
        if status is None:
            return LineResult(custom_id, error=BatchLineError(f"the batch could not run this request: {message} ({error.get('type')})"))
        cls = status_error_class(status, error.get("type"), message)
        return LineResult(custom_id, error=cls(f"{error.get('type')} in the batch: {message}", status=status, code=error.get("type")))
    return LineResult(custom_id)  # canceled or expired: to do again
