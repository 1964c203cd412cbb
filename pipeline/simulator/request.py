"""What the simulator reads from a chat-completions request, and what it keeps of it for tests.

`parse_chat_request` checks the body the way a provider does (a 400 with
OpenAI's error code for each kind of mistake) and keeps what the simulator
needs to answer plus a summary for `stats()["bodies"]`. `recorded_headers`
keeps the x-* request headers, never a credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

_ROLES = frozenset({"system", "developer", "user", "assistant"})
# Body keys recorded on their own; any other top-level key is listed under "extra".
_RECORDED_KEYS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "stream", "stream_options", "temperature",
                            "response_format"})
_SECRET_HEADER = re.compile(r"key|token|secret|auth|cookie|password", re.IGNORECASE)
_URL_IN_MESSAGE = 60  # how much of an image URL an error message quotes


def recorded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The x-* request headers, names lower-cased; a value that may be a credential shows as '***'."""
    return {name.lower(): "***" if _SECRET_HEADER.search(name) else value
            for name, value in headers.items() if name.lower().startswith("x-")}


class BadRequest(Exception):
    """A request a provider refuses with 400 invalid_request_error and this code."""

    def __init__(self, message: str, code: str, **more: Any):
        super().__init__(message)
        self.message = message
        self.code = code
        self.more = more  # further fields of the error object, e.g. param


def url_timeout(url: str) -> BadRequest:
    """OpenAI's 400 for an image URL it gave up downloading (it quotes the URL, shortened)."""
    shown = url if len(url) <= _URL_IN_MESSAGE else url[: _URL_IN_MESSAGE - 3] + "..."
    return BadRequest(f"Timeout while downloading {shown}.", "invalid_image_url", param=None)


@dataclass(frozen=True)
class ChatRequest:
    model: str
    image_url: str
    texts: list[str]  # system + user text, for usage
    max_tokens: int | None  # max_tokens, else max_completion_tokens
    stream: bool
    include_usage: bool
    response_format: Any  # as sent; structured.response_format_schema reads it
    summary: dict[str, Any]  # what stats()["bodies"] keeps, but the headers


def parse_chat_request(body: Any) -> ChatRequest:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", "invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter.", "missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "missing_required_parameter")
    texts: list[str] = []
    by_role: dict[str, list[str]] = {"user": [], "system": [], "developer": [], "assistant": []}
    images: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise BadRequest(f"Invalid message at messages[{i}]: needs a valid 'role'.", "invalid_value")
        if isinstance(content, str):
            texts.append(content)
            by_role[message["role"]].append(content)
            continue
        if not isinstance(content, list):
            raise BadRequest(f"Invalid 'content' at messages[{i}].", "invalid_value")
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            image_url = part.get("image_url") if kind == "image_url" else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
                by_role[message["role"]].append(part["text"])
            elif isinstance(image_url, dict) and isinstance(image_url.get("url"), str):
                images.append(image_url)
            else:
                raise BadRequest(f"Invalid content part at messages[{i}].content[{j}].", "invalid_value")
    if not images:
        raise BadRequest("The request has no image_url content part; there is nothing to caption.", "missing_image")
    if len(images) > 1:
        raise BadRequest("The simulator captions one image per request.", "too_many_images")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequest("'max_tokens' must be a positive integer.", "invalid_value")
    stream = body.get("stream") or False
    options = body.get("stream_options") or {}
    if not isinstance(stream, bool) or not isinstance(options, dict):
        raise BadRequest("'stream' must be a boolean and 'stream_options' an object.", "invalid_value")
    system = "\n\n".join(by_role["system"] + by_role["developer"]) or None
    summary = {
        "model": model, "max_tokens": body.get("max_tokens"), "max_completion_tokens": body.get("max_completion_tokens"),
        "text": next(iter(by_role["user"]), None), "stream": body.get("stream"), "stream_options": body.get("stream_options"),
        "temperature": body.get("temperature"), "detail": images[0].get("detail"), "system": system,
        "extra": sorted(set(body) - _RECORDED_KEYS), "response_format": body.get("response_format"),
    }
    return ChatRequest(model, images[0]["url"], texts, max_tokens, stream, bool(options.get("include_usage")),
                       body.get("response_format"), summary)
