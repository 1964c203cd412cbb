"""Reading a streamed chat completion: server-sent events -> one Completion, or a typed error.

Three layers, each usable alone:
- `SSEParser` turns bytes, split anywhere, into events by the WHATWG rules
  (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
  CR, LF and CRLF line ends, ':' comments, multi-line `data`, a blank line dispatches.
- `CompletionAssembler` turns `chat.completion.chunk` payloads into a Completion
  and classifies an error sent inside a 200 stream like a status error.
- `read_completion` drives both from an aiohttp body, with a stall timeout per read.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import aiohttp

from .errors import APIError, APIResponseError, APITimeoutError, status_error_class
from .records import Completion
from .response import MAX_ANSWER_BYTES, answer, content_text, error_message

DONE = "[DONE]"
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str = "message"  # the `event:` field; OpenAI-style servers never set it
    last_event_id: str = ""


class SSEParser:
    """Incremental and pure: feed() bytes as they arrive, get back the events they complete."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""  # text after the last complete line
        self._after_cr = False  # the last line ended in CR: a LF that comes next belongs to it
        self._at_start = True  # a BOM is allowed once, before anything else
        self._data: list[str] = []
        self._event = ""
        self.last_event_id = ""
        self.retry_ms: int | None = None  # what `retry:` asked for; we never reconnect, so only kept

    def feed(self, chunk: bytes) -> list[Event]:
        return self._take(self._decoder.decode(chunk))

    def close(self) -> list[Event]:
        """End of input. Per the spec an event still missing its blank line is dropped, not
        dispatched, so this returns [] in practice; `pending` tells whether anything was cut off."""
        return self._take(self._decoder.decode(b"", final=True))

    @property
    def pending(self) -> bool:
        """Part of an event (or of a line) has arrived and not been dispatched."""
        return bool(self._buffer or self._data)

    def _take(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._at_start:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = False
        buffer = self._buffer + text
        events: list[Event] = []
        start = 0
        for end in _LINE_END.finditer(buffer):
            if end.group() == "\r" and end.end() == len(buffer):
                self._after_cr = True  # maybe the first half of a CRLF split across chunks
            event = self._line(buffer[start : end.start()])
            if event is not None:
                events.append(event)
            start = end.end()
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "error":  # not in the spec: llama.cpp's server reports a failure as `error: {...}`
            self._data.append(value)
            self._event = "error"
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event("\n".join(data), event or "message", self.last_event_id)


class CompletionAssembler:
    """Folds chat.completion.chunk payloads into one Completion."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, started_at: float | None = None,
                 mask: Callable[[str], str] = str):
        self._clock = clock
        self._mask = mask  # applied to event text before an error message quotes it (the key never shows)
        self.started_at = clock() if started_at is None else started_at
        self.first_token_at: float | None = None  # clock() at the first non-empty content delta
        self.done = False  # [DONE] seen; later events are ignored
        self.finish_reason: str | None = None
        self._pieces: list[str] = []
        self._refusal: list[str] = []
        self._chars = 0
        self._id: str | None = None
        self._model: str | None = None
        self._usage: dict[str, Any] = {}

    @property
    def received_chars(self) -> int:
        return self._chars

    @property
    def time_to_first_token(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    def add(self, data: str, event: str = "message") -> None:
        if self.done:
            return
        if data.strip() == DONE:
            self.done = True
            return
        if not data.strip():  # an empty `data:` line: nothing to say, nothing wrong
            return
        try:
            payload = json.loads(data)
        except json.JSONDecodeError:
            raise APIResponseError(f"the provider sent a stream event that is not JSON: {_snippet(self._mask(data))}") from None
        if not isinstance(payload, dict):
            raise APIResponseError(f"the provider sent a stream event that is not a JSON object: {_snippet(self._mask(data))}")
        if payload.get("error") or payload.get("object") == "error" or event == "error":
            masked = self._mask(data)
            try:
                payload = json.loads(masked)
            except json.JSONDecodeError:
                pass
            raise stream_error(payload, masked)
        self._id = self._id or _str_or_none(payload.get("id"))
        self._model = self._model or _str_or_none(payload.get("model"))
        if isinstance(payload.get("usage"), dict):  # the include_usage chunk; the last one wins
            self._usage = payload["usage"]
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return
        delta = choices[0].get("delta")
        delta = delta if isinstance(delta, dict) else {}
        content = content_text(delta.get("content"))  # a string, or Mistral's list of parts
        if content:
            if self.first_token_at is None:
                self.first_token_at = self._clock()
            self._pieces.append(content)
            self._chars += len(content)
            if self._chars > MAX_ANSWER_BYTES:
                raise APIResponseError(f"the provider streamed more than {MAX_ANSWER_BYTES:,} characters: not a caption")
        if isinstance(delta.get("refusal"), str):
            self._refusal.append(delta["refusal"])
        if choices[0].get("finish_reason") == "error":  # OpenRouter's end of a failed stream, when it sent no error object
            raise APIResponseError(f"the provider ended the stream with finish_reason 'error' after {self._chars} characters")
        if choices[0].get("finish_reason"):
            self.finish_reason = str(choices[0]["finish_reason"])

    def finish(self, ended: str = "the stream ended") -> Completion:
        """The Completion, once the stream is over; `ended` says how it ended, for the error message."""
        if not self.done and self.finish_reason is None:
            raise APIResponseError(
                f"the provider's stream ended before it finished (truncated): {ended} after "
                f"{self._chars} characters, with no finish_reason and no [DONE]"
            )
        return answer(
            "".join(self._pieces),
            refusal="".join(self._refusal),
            finish_reason=self.finish_reason,
            model=self._model,
            response_id=self._id,
            usage=self._usage,
        )


def stream_error(payload: dict[str, Any], raw: str) -> APIError:
    """An error event inside a 200 stream, classified as if it had been the status it names.

    OpenAI sends {"error": {"message", "type", "code"}}; vLLM {"object": "error",
    "message", "type", "code": 500}. A numeric code (or `status`) picks the class
    a status error would have (vLLM 503 -> ServerError, retried); without one it
    is an APIResponseError, which is retried too.
    """
    inner = payload["error"] if isinstance(payload.get("error"), dict) else payload
    message = error_message(payload) or _snippet(raw)
    status = next(filter(None, (_http_status(inner.get(key)) for key in ("code", "status", "status_code"))), None)
    if status is None:  # a word instead of a number: OpenRouter's "server_error", vLLM's "InternalServerError"
        status = next(filter(None, (_WORD_STATUS.get(str(inner.get(key)).lower()) for key in ("code", "type"))), None)
    # The machine-readable code: a word in `code` ("insufficient_quota"), else the `type`.
    word = inner.get("code") if _http_status(inner.get("code")) is None else None
    code = _str_or_none(word) or _str_or_none(inner.get("type"))
    if status is None:
        return APIResponseError(f"the provider sent an error inside the stream: {message}")
    return status_error_class(status, code, message)(
        f"the provider sent an error inside the stream (code {status}): {message}", status=status, code=code
    )


class _Body(Protocol):
    async def readany(self) -> bytes: ...


async def read_completion(
    content: aiohttp.StreamReader | _Body,
    *,
    stall_timeout: float | None,
    started_at: float | None = None,
    mask: Callable[[str], str] = str,
) -> tuple[Completion, float | None]:
    """Read an event stream to its end: (completion, seconds to the first content token).

    `stall_timeout` bounds each read, not the whole stream: a provider that goes
    silent for longer raises APITimeoutError. `started_at` (time.monotonic()) is
    when the request was sent, so time to first token includes the wait for
    headers; by default it counts from this call. Reading stops at [DONE]
    without waiting for the connection to close. A connection that breaks
    mid-stream counts as the end of the stream: accepted if a finish_reason had
    arrived, otherwise a truncated APIResponseError.
    """
    parser = SSEParser()
    assembler = CompletionAssembler(started_at=started_at, mask=mask)
    ended = "the stream ended"
    while not assembler.done:
        try:
            async with asyncio.timeout(stall_timeout) as deadline:
                chunk = await content.readany()
        except TimeoutError:
            if not deadline.expired():  # someone else's timeout (the caller's total), not a stall
                raise
            raise APITimeoutError(
                f"the stream was silent for more than {stall_timeout:g} s "
                f"(after {assembler.received_chars} characters); the provider stalled"
            ) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            ended = f"the connection broke ({type(e).__name__}: {e})"
            break
        if not chunk:
            break
        for event in parser.feed(chunk):
            assembler.add(event.data, event.event)
            if assembler.done:
                break
    if not assembler.done:
        for event in parser.close():
            assembler.add(event.data, event.event)
        if parser.pending:
            ended += " in the middle of an event"
    return assembler.finish(ended), assembler.time_to_first_token


# Error words that name a status, as streams that carry no number spell them.
_WORD_STATUS = {
    "server_error": 500, "internalservererror": 500, "internal_server_error": 500, "api_error": 500,
    "overloaded_error": 529, "serviceunavailableerror": 503, "service_unavailable": 503,
    "rate_limit_exceeded": 429, "rate_limit_error": 429, "ratelimiterror": 429,
    "insufficient_quota": 429, "timeout": 408, "timeout_error": 408,
    "badrequesterror": 400, "invalid_request_error": 400, "context_length_exceeded": 400,
}


def _http_status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and 400 <= value <= 599 else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _snippet(text: str, limit: int = 200) -> str:
    text = text[:limit].strip().replace("\n", " ")
    return repr(text) if text else "(empty)"
