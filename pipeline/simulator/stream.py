"""How the simulator writes a streamed answer: the SSE dialects real servers speak, and how streams break.

Styles (all valid server-sent events, all carrying the same chunks):
- lf, crlf, cr: the three line ends the spec allows;
- keepalive: ': keep-alive' comment lines before every event, as proxies add;
- multiline: every JSON payload spread over several `data:` lines (JSON allows
  newlines between tokens; the client joins data lines with '\\n');
- fragmented: CRLF line ends, each event written in tiny random-size pieces, cut
  on purpose between every CR and LF and inside every multi-byte UTF-8 character;
- no_done: no `data: [DONE]` at the end (the finish_reason chunk is still sent).

Faults (the simulator decides which; this module only knows their payloads):
see `STREAM_FAULTS` and Simulator._stream.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from aiohttp import web

from pipeline.simulator.dialects import DIALECT_STREAM_FAULTS, content_deltas

STREAM_STYLES = ("lf", "crlf", "cr", "keepalive", "multiline", "fragmented", "no_done")
STREAM_FAULTS = ("stream_error", "stream_error_vllm", "truncated", "stall", *DIALECT_STREAM_FAULTS)

_LINE_ENDS = {"crlf": "\r\n", "cr": "\r", "fragmented": "\r\n"}
_HARD_CUT_PAUSE = 0.002  # seconds


def completion_chunks(completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A chat.completion as the chat.completion.chunk sequence a provider streams: about four
    content deltas, then the finish_reason, then (with include_usage) a usage chunk with no choices;
    with include_usage every earlier chunk carries `"usage": null`, as OpenAI's do."""
    base = {key: completion[key] for key in ("id", "created", "model", "system_fingerprint") if key in completion}
    base |= {"object": "chat.completion.chunk"} | ({"usage": None} if include_usage else {})
    chunks = [base | {"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}
              for delta in content_deltas(completion["choices"][0]["message"])]
    finish_reason = completion["choices"][0]["finish_reason"]
    chunks.append(base | {"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason}]})
    if include_usage:
        chunks.append(base | {"choices": [], "usage": completion["usage"]})
    return chunks


def error_payload(fault: str) -> dict[str, Any]:
    """What an in-stream error looks like: OpenAI's shape (a type word, no status), or vLLM's (status in `code`)."""
    if fault == "stream_error_vllm":  # today's vLLM: ErrorResponse{error: ErrorInfo}, the status in `code`
        return {"error": {"message": "The engine died while generating (simulated).",
                          "type": "InternalServerError", "param": None, "code": 500}}
    return {"error": {"message": "The server had an error while processing your request (simulated).",
                      "type": "server_error", "param": None, "code": None}}


def frame(payload: dict[str, Any] | str, style: str, field: str = "data") -> str:
    """One event in the given style; a str payload is sent as is (e.g. [DONE] or a broken body)."""
    if isinstance(payload, dict):
        # Raw UTF-8, not \\u escapes, so that a '×' in a caption is two bytes on the wire.
        payload = json.dumps(payload, ensure_ascii=False, indent=1 if style == "multiline" else None)
    eol = _LINE_ENDS.get(style, "\n")
    comment = f": keep-alive{eol}{eol}" if style == "keepalive" else ""
    return comment + "".join(f"{field}: {line}{eol}" for line in payload.split("\n")) + eol


def fragment(data: bytes, rng: random.Random, largest: int = 6) -> list[bytes]:
    """`data` in pieces of 1..largest bytes, also cut between every CR and LF and inside every
    multi-byte UTF-8 character, so that a client sees each hard case at least once."""
    cuts = {i for i in range(1, len(data)) if data[i - 1 : i + 1] == b"\r\n" or data[i] & 0xC0 == 0x80}
    position = 0
    while position < len(data):
        position += rng.randint(1, largest)
        cuts.add(position)
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(data)), len(data)]
    return [data[start:end] for start, end in zip(bounds, bounds[1:])]


class SSEWriter:
    """Writes events to a prepared StreamResponse in one style."""

    def __init__(self, response: web.StreamResponse, style: str, rng: random.Random):
        self._response = response
        self._style = style
        self._rng = rng

    async def send(self, payloads: list[dict[str, Any] | str], field: str = "data") -> None:
        for payload in payloads:
            data = frame(payload, self._style, field).encode()
            if self._style != "fragmented":
                await self._response.write(data)
                continue
            pieces = fragment(data, self._rng)
            for piece, after in zip(pieces, [*pieces[1:], b""]):
                await self._response.write(piece)
                # A short pause after a cut between CR and LF or inside a character, so that the
                # client most likely reads that piece on its own instead of with the next one.
                hard_cut = piece.endswith(b"\r") or (after != b"" and after[0] & 0xC0 == 0x80)
                await asyncio.sleep(_HARD_CUT_PAUSE if hard_cut else 0)

    async def end(self, *, done: bool = True) -> None:
        """Close the stream properly, with `data: [DONE]` unless told otherwise or the style omits it."""
        if done and self._style != "no_done":
            await self.send(["[DONE]"])
        await self._response.write_eof()
