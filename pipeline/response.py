"""Turning the provider's answers into a Completion, or into a short, readable error message."""

from __future__ import annotations

import json
from typing import Any

from .errors import APIResponseError
from .records import Completion


def parse_completion(raw: bytes) -> Completion:
    """A 200 body -> Completion; an unusable body raises APIResponseError (which is retried)."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise APIResponseError(f"the provider answered 200 with a body that is not JSON: {_snippet(raw)}") from None
    if not isinstance(payload, dict):
        raise APIResponseError(f"the provider answered 200 with JSON that is not an object: {_snippet(raw)}")
    if payload.get("error"):
        raise APIResponseError(f"the provider answered 200 with an error: {error_message(payload) or _snippet(raw)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise APIResponseError("the provider answered 200 without any choices")
    message = choices[0].get("message") or {}
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise APIResponseError("the provider answered 200 but the message content is empty (null)")
    usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
    return Completion(
        caption=content,
        finish_reason=choices[0].get("finish_reason"),
        model=payload.get("model"),
        response_id=payload.get("id"),
        usage=usage,
    )


def error_message(payload: Any) -> str | None:
    """The human part of an error body: OpenAI's {"error": {"message"}}, or vLLM-style {"message"}."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    if isinstance(error, str):
        return error
    if isinstance(payload.get("message"), str):
        return payload["message"]
    return None


def error_code(payload: Any) -> str | None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        code = payload["error"].get("code") or payload["error"].get("type")
        return str(code) if code is not None else None
    return None


def parse_error_body(raw: bytes) -> tuple[str, str | None]:
    """(message, code) from a non-2xx body, whatever its shape."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _snippet(raw), None
    return error_message(payload) or _snippet(raw), error_code(payload)


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace").strip().replace("\n", " ")
    return repr(text) if text else "(empty body)"
