"""The simulator's answers that go wrong on purpose: injected faults (resets, hangs, malformed bodies, error
statuses in each provider's dialect) and 200 event streams, which may carry an error, break off or stall."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline.simulator.answers import bad_request_response, drop_connection, error_body, malformed_body, status_response
from pipeline.simulator.dialects import play_fault_dialect, stream_error_frame
from pipeline.simulator.request import ChatRequest, url_timeout
from pipeline.simulator.settings import MALFORMED_VARIANTS
from pipeline.simulator.stream import SSEWriter, completion_chunks, error_payload

if TYPE_CHECKING:
    from pipeline.simulator.server import Simulator


class Misbehaviour:
    """Reads the simulator's settings and counts into its stats as they are now (configure and reset replace them)."""

    def __init__(self, simulator: "Simulator"):
        self._sim = simulator
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self._stream_rng = random.Random(seed)
        self._malformed_turn = 0

    async def inject(self, request: web.Request, fault: str, n: int, chat: ChatRequest, headers: dict[str, str]) -> web.StreamResponse:
        if fault == "malformed":
            fault = f"malformed:{MALFORMED_VARIANTS[self._malformed_turn % len(MALFORMED_VARIANTS)]}"
            self._malformed_turn += 1
        self._sim.stats.faults[fault] += 1
        if fault == "reset":
            self._sim.stats.by_status["reset"] += 1
            await drop_connection(request)
        if fault == "hang":
            self._sim.stats.by_status["hang"] += 1  # counted now: the client usually gives up first
            await self.hang()
            await drop_connection(request)
        if fault.startswith("malformed:"):
            body = malformed_body(fault.partition(":")[2], n, chat.model)
            if chat.stream:
                response, writer = await self._start_stream(request, headers)
                await writer.send([body])
                await writer.end()
                return response
            return web.Response(text=body, content_type="application/json", headers=headers)
        if fault == "url_timeout":
            return bad_request_response(url_timeout(chat.image_url), headers)
        dialect = await play_fault_dialect(fault, request, headers, self._sim.settings.retry_after)
        if dialect is not None:
            return dialect
        if fault == "quota":  # OpenAI's 429 for an account out of credit: retrying does not help
            body = error_body("You exceeded your current quota, please check your plan and billing details.", "insufficient_quota", "insufficient_quota")
            return web.json_response(body, status=429, headers=headers)
        return self.status(int(fault), headers, model=chat.model)

    def status(self, status: int, headers: dict[str, str], model: str = "") -> web.Response:
        return status_response(status, headers, self._sim.settings.retry_after, self._sim.settings.retry_after_form, model)

    async def _start_stream(self, request: web.Request, headers: dict[str, str]) -> tuple[web.StreamResponse, SSEWriter]:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response, SSEWriter(response, self._sim.settings.stream_style, self._stream_rng)

    async def stream(self, request: web.Request, completion: dict[str, Any], include_usage: bool,
                      headers: dict[str, str], fault: str | None) -> web.StreamResponse:
        """A 200 event stream; with a stream fault it goes wrong after the first content chunks."""
        chunks = completion_chunks(completion, include_usage)
        response, writer = await self._start_stream(request, headers)
        if fault is None:
            await writer.send(chunks)
            await writer.end()
            return response
        content_chunks = len(chunks) - 1 - include_usage
        await writer.send(chunks[: 1 if fault == "stall" else max(1, content_chunks // 2)])
        if fault in ("stream_error", "stream_error_vllm"):
            await writer.send([error_payload(fault)])
            await writer.end(done=False)
            return response
        if fault.startswith("stream_error_"):  # the servers that send [DONE] after their error
            field, payload = stream_error_frame(fault)
            await writer.send([payload], field=field)
            await writer.end()
            return response
        self._sim.stats.by_status[fault] += 1  # truncated or stall: the handler never returns normally
        if fault == "stall":
            await self.hang()
        await drop_connection(request)

    async def hang(self) -> None:
        """Wait hang_seconds, or until the simulator stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._sim._stopping.wait(), self._sim.settings.hang_seconds)
