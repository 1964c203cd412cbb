"""Turning the provider's answers into a Completion, or into a short, readable error message.

One rule for plain and streamed answers alike (`answer`): a Completion holds a
non-empty caption that is the provider's whole answer. Content given as a list
of parts is joined from its text parts; reasoning (`<think>` blocks, Mistral's
`thinking` parts, `reasoning`/`reasoning_content` fields) is kept out; no text
at all is an EmptyAnswerError and a `refusal` a RefusedError, neither retried.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import APIResponseError, EmptyAnswerError, RefusedError
from .records import Completion

# Answers bigger than this are not captions: a broken or hostile endpoint (bad_response).
MAX_ANSWER_BYTES = 8 * 1024 * 1024
_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.DOTALL)
_TEXT_PARTS = frozenset({"text", "output_text"})


def parse_completion(raw: bytes) -> Completion:
    """A 200 body -> Completion; an unusable body raises APIResponseError (which is retried)."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise APIResponseError(f"the provider answered 200 with a body that is not JSON: {snippet(raw)}") from None
    if not isinstance(payload, dict):
        raise APIResponseError(f"the provider answered 200 with JSON that is not an object: {snippet(raw)}")
    if payload.get("error") or payload.get("object") == "error":
        raise APIResponseError(f"the provider answered 200 with an error: {error_message(payload) or snippet(raw)}")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise APIResponseError("the provider answered 200 without any choices")
    message = choices[0].get("message")
    message = message if isinstance(message, dict) else {}
    return answer(
        content_text(message.get("content")),
        refusal=message.get("refusal"),
        finish_reason=choices[0].get("finish_reason"),
        model=payload.get("model"),
        response_id=payload.get("id"),
        usage=payload.get("usage") if isinstance(payload.get("usage"), dict) else {},
    )


def content_text(content: Any) -> str:
    """`content` as text: a string, or the text parts of a list of parts (thinking parts left out)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text") or "")
            for part in content
            if isinstance(part, str) or (isinstance(part, dict) and part.get("type", "text") in _TEXT_PARTS)
        )
    return ""


def answer(
    text: str,
    *,
    refusal: Any = None,
    finish_reason: str | None,
    model: str | None,
    response_id: str | None,
    usage: dict[str, Any],
) -> Completion:
    """The caption from an answer's text, or the typed error that says why there is none."""
    caption = _THINK.sub("", text).strip() if "<think>" in text else text.strip()
    details = {"usage": usage, "model": model, "response_id": response_id, "finish_reason": finish_reason}
    if isinstance(refusal, str) and refusal.strip() and not caption:
        raise RefusedError(f"the model refused: {refusal.strip()[:500]}", **details)
    if not caption:
        raise EmptyAnswerError(_empty_message(finish_reason, usage), **details)
    return Completion(caption=caption, finish_reason=finish_reason, model=model, response_id=response_id, usage=usage)


def _empty_message(finish_reason: str | None, usage: dict[str, Any]) -> str:
    if finish_reason == "length":
        spent = usage.get("completion_tokens")
        spent = f" all {spent} of its tokens" if isinstance(spent, int) else " its whole token budget"
        return (f"the provider answered with no content (finish_reason 'length'): the model spent{spent} before "
                "writing a caption. Reasoning models (gpt-5, o-series, Gemini 2.5, Qwen3, DeepSeek-R1) think first: "
                "raise --max-tokens (e.g. 2000) and rerun")
    return f"the provider answered with no content (finish_reason {finish_reason!r}); rerun to try again"


def error_message(payload: Any) -> str | None:
    """The human part of an error body: OpenAI's {"error": {"message"}}, vLLM-style {"message"}, or a list of either (Gemini)."""
    if isinstance(payload, list):
        return next(filter(None, map(error_message, payload)), None)
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
    if isinstance(payload, list):
        return next(filter(None, map(error_code, payload)), None)
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        code = error.get("code") or error.get("type") or error.get("status")
        # A gateway that flattens the code to the status ("429") may keep the meaning in `type`.
        if str(code).isdigit() and isinstance(error.get("type"), str):
            code = error["type"]
        return str(code) if code is not None else None
    return None


def parse_error_body(raw: bytes) -> tuple[str, str | None]:
    """(message, code) from a non-2xx body, whatever its shape."""
    try:
        payload = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return snippet(raw), None
    return error_message(payload) or snippet(raw), error_code(payload)


def error_payload(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def snippet(raw: bytes | str, limit: int = 200) -> str:
    text = raw if isinstance(raw, str) else raw[: limit * 4].decode("utf-8", "replace")
    text = text[:limit].strip().replace("\n", " ")
    return repr(text) if text else "(empty body)"
