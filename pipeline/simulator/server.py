"""The simulator's server: one aiohttp app answering chat completions like a provider, and misbehaving on demand.

It answers like a provider (bearer auth, 400s for bad requests and undecodable
images, usage counted the provider's way, SSE streaming) and misbehaves like
one on demand: 429/5xx with Retry-After in its several spellings, dropped
connections, requests that never finish, 200s whose body is useless, and
streams that carry an error, break off or stall. Faults come from seeded random
rates, or from `fault_script`, which replays an exact sequence per image: the
Nth request carrying an image gets the Nth entry. It enforces rate limits the
way a provider does (limits.py), plays real providers' dialects (dialects.py) and faults (misbehave.py),
serves test images (assets.py) and both batch APIs (batches.py, message_batches.py).
It listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import math
import random
from typing import Any

import aiohttp
from aiohttp import web

from pipeline.simulator.answers import bad_request_response, completion_body, error_body, image_key
from pipeline.simulator.assets import AssetRoutes
from pipeline.simulator.batches import BatchEngine, OpenAIBatches
from pipeline.simulator.dialects import ANSWER_FAULTS, play_answer, rename_like_a_gateway
from pipeline.simulator.limits import Limits, SlidingWindow, limit_error, retry_headers
from pipeline.simulator.message_batches import MessageBatches
from pipeline.simulator.misbehave import Misbehaviour
from pipeline.simulator.structured import response_format_schema, schema_in_prompt, structured_answer
from pipeline.simulator.request import BadRequest, ChatRequest, parse_chat_request, recorded_headers, url_timeout
from pipeline.simulator.settings import DEFAULT_MODEL, MAX_BODY_BYTES, SimulatorSettings, SimulatorStats, pick_fault
from pipeline.simulator.stream import STREAM_FAULTS
from pipeline.simulator.vision import (
    ImageFetchTimeout,
    UndecodableImage,
    UnreachableImage,
    caption_from_header,
    caption_image,
    count_usage,
    data_url_head,
    fit_caption,
    image_bytes,
)


class Simulator:
    def __init__(self, settings: SimulatorSettings | None = None):
        self.settings = settings or SimulatorSettings()
        self.stats = SimulatorStats()
        self.base_url: str | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._next_id = 0
        self._window = SlidingWindow()
        self._stopping = asyncio.Event()  # wakes hung requests so a stop never waits for them
        self._batches: BatchEngine | None = None
        self._misbehave = Misbehaviour(self)
        self._reseed()

    def _reseed(self) -> None:
        self._fault_rng = random.Random(self.settings.seed)
        self._jitter_rng = random.Random(self.settings.seed + 1)  # jitter never shifts fault draws
        self._misbehave.reseed(self.settings.seed + 2)  # nor do fragment sizes

    def configure(self, **knobs: Any) -> None:
        self.settings.update(**knobs)
        if "seed" in knobs:
            self._reseed()

    def reset_stats(self) -> None:
        """Zero the counters; per-image script positions, the random draws and the rate-limit windows start over."""
        self.stats.reset()
        self._window.clear()
        self._reseed()

    # lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._stopping.clear()
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_post("/_sim/config", self._post_config)
        app.router.add_post("/_sim/reset", self._post_reset)
        AssetRoutes(lambda: self.settings.image_dir).add_to(app.router)
        self._batches = BatchEngine(self)
        OpenAIBatches(self, self._batches).add_to(app.router)
        MessageBatches(self, self._batches).add_to(app.router)
        app.cleanup_ctx.append(self._client_session)
        app.on_response_prepare.append(self._rename_headers)
        # handler_cancellation: a client that hangs up cancels its handler, as
        # `reset` and `hang` rely on; shutdown_timeout bounds a stop under load.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        bound_host, bound_port = self._runner.addresses[0][:2]
        shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown_host}:{bound_port}/v1"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()
        if self._batches is not None:
            await self._batches.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _rename_headers(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        rename_like_a_gateway(request, response, self.settings.header_style)

    async def _client_session(self, app: web.Application) -> Any:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as self._http:
            yield

    # handlers

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        self._next_id += 1
        stats.requests += 1
        stats.connections.add(id(request.transport))
        stats.in_flight += 1
        stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
        try:
            response = await self._answer(request, self._next_id)
        except web.HTTPException as exc:  # aiohttp's own, e.g. 413 for a huge body
            stats.by_status[str(exc.status)] += 1
            raise
        finally:
            stats.in_flight -= 1
        stats.by_status[str(response.status)] += 1
        return response

    async def _answer(self, request: web.Request, n: int) -> web.StreamResponse:
        settings = self.settings
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        # The request is read before the latency is waited out, not after: a provider's latency runs from
        # the request to its answer, its own work included. Otherwise the simulator's CPU per request
        # (one core, answering waves of requests in turn) would add to every latency a client sees.
        schema = None
        try:
            chat: ChatRequest | Exception = parse_chat_request(await request.json())
            schema = response_format_schema(chat.response_format)
        except (ValueError, BadRequest) as exc:  # ValueError includes JSONDecodeError and UnicodeDecodeError
            chat = exc
        delay = settings.latency + self._jitter_rng.uniform(-settings.jitter, settings.jitter) - (loop.time() - arrived)
        if delay > 0:
            await asyncio.sleep(delay)
        limits = Limits(settings.rpm_limit, settings.tpm_limit, settings.limit_window, settings.limit_headers)
        headers = {"x-request-id": f"req-sim-{n}", **self._window.peek(limits)}
        if not self._authorized(request):
            return self._misbehave.status(401, headers)
        if isinstance(chat, BadRequest):
            return bad_request_response(chat, headers)
        if isinstance(chat, Exception):
            return bad_request_response(BadRequest("We could not parse the JSON body of your request.", "invalid_json"), headers)
        self.stats.bodies.append({**chat.summary, "headers": recorded_headers(request.headers)})

        refused = {f"data:image/{kind.strip()};" for kind in settings.refuse_formats.split(",") if kind.strip()}
        if refused and chat.image_url.startswith(tuple(refused)):
            return bad_request_response(BadRequest("invalid image input", "invalid_image"), headers)
        seen = None
        if limits.on:  # the token count needs the image's size, so look at it before the limiter
            try:
                seen = await self._look(chat)
            except BadRequest as exc:
                return bad_request_response(exc, headers)
            tokens = count_usage(seen[0], seen[1], chat.texts, "")["prompt_tokens"] + (chat.max_tokens or 0)
            verdict = self._window.admit(tokens, limits)  # no await between check and record
            headers.update(verdict.headers)
            if not verdict.admitted:
                self.stats.rate_limited += 1
                body = limit_error(verdict, limits, tokens, chat.model, self._window.used())
                retry = retry_headers(verdict.wait) if math.isfinite(verdict.wait) else {}
                return web.json_response(body, status=429, headers={**headers, **retry})

        counts = self.stats.images.setdefault(image_key(chat.image_url), {"requests": 0, "ok": 0})
        nth = counts["requests"]
        counts["requests"] += 1
        if nth:
            self.stats.repeat_images += 1  # the same image (bytes or URL) sent before: a retry, or a twin under another id
        fault = pick_fault(self.settings, self._fault_rng, nth)
        if fault in STREAM_FAULTS and not chat.stream:
            fault = "reset" if fault == "truncated" else None  # a body cut short; the rest need a stream
        if fault is not None and fault not in STREAM_FAULTS and fault not in ANSWER_FAULTS:
            return await self._misbehave.inject(request, fault, n, chat, headers)
        try:
            width, height, caption = seen or await self._look(chat)
        except BadRequest as exc:
            return bad_request_response(exc, headers)
        if self.settings.ignore_response_format:
            schema = None
        if (asked := schema or schema_in_prompt(chat.texts)) is not None:
            caption = structured_answer(asked, caption, invalid=nth < self.settings.invalid_answers, chatty=schema is None)
        caption, finish_reason = fit_caption(caption, chat.max_tokens)
        usage = count_usage(width, height, chat.texts, caption)
        completion = completion_body(n, chat.model, caption, finish_reason, usage)
        if fault in ANSWER_FAULTS:
            completion = play_answer(fault, completion, chat.max_tokens)
        if fault is not None:
            self.stats.faults[fault] += 1
        else:
            counts["ok"] += 1
        if chat.stream:
            return await self._misbehave.stream(request, completion, chat.include_usage, headers, None if fault in ANSWER_FAULTS else fault)
        return web.json_response(completion, headers=headers)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._misbehave.status(401, {})
        model = self.settings.model or DEFAULT_MODEL
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "simulator"}]})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.snapshot())

    async def _post_config(self, request: web.Request) -> web.Response:
        try:
            knobs = await request.json()
            if not isinstance(knobs, dict):
                raise ValueError("expected a JSON object of settings")
            self.configure(**knobs)
        except (ValueError, TypeError) as exc:
            return web.json_response(error_body(str(exc), "invalid_request_error", "invalid_config"), status=400)
        return web.json_response({"settings": self.settings.public()})

    async def _post_reset(self, request: web.Request) -> web.Response:
        self.reset_stats()
        return web.json_response(self.stats.snapshot())

    # pieces of an answer

    async def _look(self, chat: ChatRequest) -> tuple[int, int, str]:
        """(width, height, caption) of the request's image; BadRequest as a provider says it cannot have it."""
        assert self._http is not None
        if self.settings.decode == "header" and chat.image_url.startswith("data:"):
            # Most headers lie in the first few KB; decoding 300 KB of base64 would cost more than the rest of the answer.
            with contextlib.suppress(UndecodableImage):
                return caption_from_header(data_url_head(chat.image_url))
        try:
            data = await image_bytes(chat.image_url, self._http, self.settings.fetch_timeout)
            if self.settings.decode == "header":
                return caption_from_header(data)  # microseconds: not worth a thread
            return await asyncio.to_thread(caption_image, data)
        except ImageFetchTimeout:
            raise url_timeout(chat.image_url) from None
        except UnreachableImage:
            raise BadRequest("Unable to download the image from the URL", "invalid_image_url") from None
        except UndecodableImage:
            raise BadRequest("Could not process image", "invalid_image") from None

    def _authorized(self, request: web.BaseRequest) -> bool:
        header = request.headers.get("Authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        if self.settings.api_key is None:
            return bool(token.strip())
        return hmac.compare_digest(token.encode(), self.settings.api_key.encode())
