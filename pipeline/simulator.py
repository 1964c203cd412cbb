"""An OpenAI-compatible vision chat-completions server for tests, demos and benchmarks.

It answers like a provider (bearer auth, 400s for bad requests and undecodable
images, usage counted the provider's way, SSE streaming) and misbehaves like
one on demand: 429/5xx with Retry-After in its several spellings, dropped
connections, requests that never finish, 200s whose body is useless, and
streams that carry an error, break off or stall. Faults come from seeded random
rates, or from `fault_script`, which replays an exact sequence per image: the
Nth request carrying an image gets the Nth entry. `stream_style` picks the SSE
dialect of streamed answers (see simulator_stream).

It listens on loopback only and never fetches from anywhere but loopback.
It also enforces rate limits the way a provider does (requests and tokens per
sliding window, with OpenAI's or Anthropic's headers; see simulator_limits),
and serves test images and files for clients that download images themselves
(GET /_sim/images/WxH.png, GET /_sim/files/PATH; see simulator_assets).

Run it with `python -m pipeline.simulator --port 0`, or in-process with
`serve_in_thread()`. Control endpoints: GET /_sim/stats, POST /_sim/config,
POST /_sim/reset.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any, Iterator, NoReturn

import aiohttp
from aiohttp import web

from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.simulator_assets import FORMATS, AssetRoutes
from pipeline.simulator_limits import LIMIT_HEADER_FORMS, Limits, SlidingWindow, limit_error, retry_headers
from pipeline.simulator_request import BadRequest, ChatRequest, parse_chat_request, recorded_headers, url_timeout
from pipeline.simulator_vision import (
    LOOPBACK_HOSTS,
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
from pipeline.simulator_dialects import ANSWER_FAULTS, HEADER_STYLES, gemini_429_body, play_answer, rename_like_a_gateway, stream_error_frame
from pipeline.simulator_stream import STREAM_FAULTS, STREAM_STYLES, SSEWriter, completion_chunks, error_payload

DEFAULT_MODEL = "claude-sonnet-4-20250514"
RETRY_AFTER_FORMS = ("seconds", "http-date", "ms", "none")
DECODE_MODES = ("full", "header")
MALFORMED_VARIANTS = ("not_json", "error_object", "no_choices", "null_content")
NAMED_FAULTS = frozenset({"ok", "reset", "hang", "malformed", "quota", "url_timeout", "gemini_429", "echo_key", "huge", *STREAM_FAULTS, *ANSWER_FAULTS} | {f"malformed:{v}" for v in MALFORMED_VARIANTS})
_MAX_BODY_BYTES = 50 * 1024 * 1024  # providers cap a request at tens of MB too
_KEPT_BODIES = 1000

# status -> (error type, code, message) for scripted or random status faults.
_STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid request (simulated)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    402: ("payment_required", None, "Insufficient credits. Add more using https://openrouter.ai/credits"),
    403: ("permission_error", "permission_denied", "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("timeout_error", None, "Request timed out."),
    409: ("conflict_error", None, "The request conflicted with another request; try again."),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", "overloaded", "The server is overloaded or not ready yet."),
    529: ("overloaded_error", None, "Overloaded"),
}


@dataclass
class SimulatorSettings:
    """Every knob; all may change while the server runs (see `update`)."""

    latency: float = 0.0  # seconds before answering
    jitter: float = 0.0  # +/- seconds, uniform
    rate_429: float = 0.0
    rate_5xx: float = 0.0  # status drawn from 500, 502, 503, 529
    rate_reset: float = 0.0  # close the socket without an answer
    rate_hang: float = 0.0  # never answer (for hang_seconds)
    rate_malformed: float = 0.0  # 200 with an unusable body
    # Stream faults; a request without stream:true gets a normal answer instead (a reset for truncated).
    rate_stream_error: float = 0.0  # an error event mid-stream, OpenAI or vLLM shape
    rate_truncated: float = 0.0  # the connection closes mid-stream
    rate_stall: float = 0.0  # one chunk, then silence for hang_seconds
    hang_seconds: float = 3600.0  # how long hang and stall keep the connection open
    retry_after: float = 1.0  # seconds, advertised by 429 and 503
    retry_after_form: str = "seconds"  # one of RETRY_AFTER_FORMS
    fault_script: list[str] = field(default_factory=list)
    stream_style: str = "lf"  # one of STREAM_STYLES
    refuse_formats: str = ""  # e.g. "gif": data URLs of these types get Ollama's 400 "invalid image input"
    header_style: str = "plain"  # one of HEADER_STYLES: "litellm" renames retry and limit headers as that gateway does
    api_key: str | None = field(default=None, repr=False)  # None: any bearer token
    model: str | None = None  # what GET /v1/models lists
    seed: int = 0
    fetch_timeout: float = 10.0  # seconds the simulator waits for an http(s) image URL
    # Rate limits over a sliding window; 0 = off. Tokens = prompt tokens + max_tokens.
    rpm_limit: int = 0
    tpm_limit: int = 0
    limit_window: float = 60.0  # seconds; tests shorten it
    limit_headers: str = "openai"  # one of LIMIT_HEADER_FORMS
    image_dir: str | None = None  # served under GET /_sim/files/
    # "full": decode every image as a provider does; "header": read only its size from the
    # header and caption from that (a throughput benchmark must not be bound by the simulator's decoding).
    decode: str = "full"

    def __post_init__(self) -> None:
        if isinstance(self.fault_script, str):
            self.fault_script = self.fault_script.split(",") if self.fault_script else []
        self.fault_script = [str(entry).strip().lower() for entry in self.fault_script]
        for entry in self.fault_script:
            if entry not in NAMED_FAULTS and not (entry.isdigit() and 400 <= int(entry) <= 599):
                raise ValueError(f"unknown fault_script entry {entry!r}: use ok, reset, hang, quota, malformed, url_timeout, "
                                 f"{', '.join(STREAM_FAULTS)} or a 4xx/5xx status")
        rates = [self.rate_429, self.rate_5xx, self.rate_reset, self.rate_hang, self.rate_malformed,
                 self.rate_stream_error, self.rate_truncated, self.rate_stall]
        if any(not 0 <= rate <= 1 for rate in rates) or sum(rates) > 1:
            raise ValueError("fault rates must each be in [0, 1] and add up to at most 1")
        if self.retry_after_form not in RETRY_AFTER_FORMS:
            raise ValueError(f"retry_after_form must be one of {', '.join(RETRY_AFTER_FORMS)}")
        if self.header_style not in HEADER_STYLES:
            raise ValueError(f"header_style must be one of {', '.join(HEADER_STYLES)}")
        if self.stream_style not in STREAM_STYLES:
            raise ValueError(f"stream_style must be one of {', '.join(STREAM_STYLES)}")
        if not isinstance(self.seed, int):
            raise ValueError("seed must be an integer")
        if min(self.latency, self.jitter, self.hang_seconds, self.retry_after) < 0:
            raise ValueError("latency, jitter, hang_seconds and retry_after cannot be negative")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in (self.rpm_limit, self.tpm_limit)):
            raise ValueError("rpm_limit and tpm_limit must be whole numbers, 0 for no limit")
        if not (self.limit_window > 0 and self.fetch_timeout > 0):
            raise ValueError("limit_window and fetch_timeout must be positive")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}")
        if self.limit_headers not in LIMIT_HEADER_FORMS:
            raise ValueError(f"limit_headers must be one of {', '.join(LIMIT_HEADER_FORMS)}")
        self.image_dir = self.image_dir or None
        if self.image_dir is not None and not os.path.isdir(self.image_dir):
            raise ValueError(f"image_dir {self.image_dir!r} is not a folder")

    def update(self, **knobs: Any) -> None:
        unknown = sorted(set(knobs) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown simulator setting(s): {', '.join(unknown)}")
        checked = replace(self, **knobs)  # validates before anything changes
        for f in fields(self):
            setattr(self, f.name, getattr(checked, f.name))

    def public(self) -> dict[str, Any]:
        shown = asdict(self)
        shown["api_key"] = None if self.api_key is None else "***"
        return shown


# --- pure helpers: the provider's arithmetic and headers ---------------------


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


def _error_body(message: str, type_: str, code: str | None, **more: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, **more, "code": code}}


async def _drop_connection(request: web.BaseRequest) -> NoReturn:
    """Close the socket without an HTTP answer: the client sees a disconnect."""
    if request.transport is not None:
        request.transport.close()
    # connection_lost() cancels this handler (the runner has handler_cancellation on).
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


# --- recording ---------------------------------------------------------------


class SimulatorStats:
    """Counters for tests. Only touched on the server's event loop."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.peak_in_flight = self.in_flight
        self.by_status: Counter[str] = Counter()  # "200", "429", ..., "reset", "hang"
        self.faults: Counter[str] = Counter()  # injected faults by kind
        self.rate_limited = 0  # 429s from rpm_limit / tpm_limit (not counted in faults)
        self.images: dict[str, dict[str, int]] = {}  # image_key -> {"requests", "ok"}
        self.bodies: deque[dict[str, Any]] = deque(maxlen=_KEPT_BODIES)
        self.connections: set[int] = set()  # the TCP connections chat requests came on (a client that reuses them shows few)

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "images": {key: dict(counts) for key, counts in self.images.items()},
            "bodies": list(self.bodies),
            "connections": len(self.connections),
        }


# --- the server --------------------------------------------------------------


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
        self._reseed()

    def _reseed(self) -> None:
        self._fault_rng = random.Random(self.settings.seed)
        self._jitter_rng = random.Random(self.settings.seed + 1)  # jitter never shifts fault draws
        self._stream_rng = random.Random(self.settings.seed + 2)  # nor do fragment sizes
        self._malformed_turn = 0

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
        app = web.Application(client_max_size=_MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_sim/stats", self._get_stats)
        app.router.add_post("/_sim/config", self._post_config)
        app.router.add_post("/_sim/reset", self._post_reset)
        AssetRoutes(lambda: self.settings.image_dir).add_to(app.router)
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
        try:
            chat: ChatRequest | Exception = parse_chat_request(await request.json())
        except (ValueError, BadRequest) as exc:  # ValueError includes JSONDecodeError and UnicodeDecodeError
            chat = exc
        delay = settings.latency + self._jitter_rng.uniform(-settings.jitter, settings.jitter) - (loop.time() - arrived)
        if delay > 0:
            await asyncio.sleep(delay)
        limits = Limits(settings.rpm_limit, settings.tpm_limit, settings.limit_window, settings.limit_headers)
        headers = {"x-request-id": f"req-sim-{n}", **self._window.peek(limits)}
        if not self._authorized(request):
            return self._status_response(401, headers)
        if isinstance(chat, BadRequest):
            return self._bad_request(chat, headers)
        if isinstance(chat, Exception):
            return self._bad_request(BadRequest("We could not parse the JSON body of your request.", "invalid_json"), headers)
        self.stats.bodies.append({**chat.summary, "headers": recorded_headers(request.headers)})

        refused = {f"data:image/{kind.strip()};" for kind in settings.refuse_formats.split(",") if kind.strip()}
        if refused and chat.image_url.startswith(tuple(refused)):
            return self._bad_request(BadRequest("invalid image input", "invalid_image"), headers)
        seen = None
        if limits.on:  # the token count needs the image's size, so look at it before the limiter
            try:
                seen = await self._look(chat)
            except BadRequest as exc:
                return self._bad_request(exc, headers)
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
        fault = self._pick_fault(nth)
        if fault in STREAM_FAULTS and not chat.stream:
            fault = "reset" if fault == "truncated" else None  # a body cut short; the rest need a stream
        if fault is not None and fault not in STREAM_FAULTS and fault not in ANSWER_FAULTS:
            return await self._inject(request, fault, n, chat, headers)
        try:
            width, height, caption = seen or await self._look(chat)
        except BadRequest as exc:
            return self._bad_request(exc, headers)
        caption, finish_reason = fit_caption(caption, chat.max_tokens)
        usage = count_usage(width, height, chat.texts, caption)
        completion = self._completion(n, chat.model, caption, finish_reason, usage)
        if fault in ANSWER_FAULTS:
            completion = play_answer(fault, completion, chat.max_tokens)
        if fault is not None:
            self.stats.faults[fault] += 1
        else:
            counts["ok"] += 1
        if chat.stream:
            return await self._stream(request, completion, chat.include_usage, headers, None if fault in ANSWER_FAULTS else fault)
        return web.json_response(completion, headers=headers)

    async def _models(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._status_response(401, {})
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
            return web.json_response(_error_body(str(exc), "invalid_request_error", "invalid_config"), status=400)
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

    def _pick_fault(self, nth: int) -> str | None:
        """The script decides while it lasts; after that, one seeded draw per request."""
        script = self.settings.fault_script
        if nth < len(script):
            return None if script[nth] == "ok" else script[nth]
        s = self.settings
        draw = self._fault_rng.random()
        for fault, rate in (("429", s.rate_429), ("5xx", s.rate_5xx), ("reset", s.rate_reset),
                            ("hang", s.rate_hang), ("malformed", s.rate_malformed),
                            ("stream_error", s.rate_stream_error), ("truncated", s.rate_truncated), ("stall", s.rate_stall)):
            if draw < rate:
                if fault == "5xx":
                    return self._fault_rng.choice(("500", "502", "503", "529"))
                if fault == "stream_error":
                    return self._fault_rng.choice(("stream_error", "stream_error_vllm"))
                return fault
            draw -= rate
        return None

    async def _inject(self, request: web.Request, fault: str, n: int, chat: ChatRequest, headers: dict[str, str]) -> web.StreamResponse:
        if fault == "malformed":
            fault = f"malformed:{MALFORMED_VARIANTS[self._malformed_turn % len(MALFORMED_VARIANTS)]}"
            self._malformed_turn += 1
        self.stats.faults[fault] += 1
        if fault == "reset":
            self.stats.by_status["reset"] += 1
            await _drop_connection(request)
        if fault == "hang":
            self.stats.by_status["hang"] += 1  # counted now: the client usually gives up first
            await self._hang()
            await _drop_connection(request)
        if fault.startswith("malformed:"):
            body = self._malformed_body(fault.partition(":")[2], n, chat.model)
            if chat.stream:
                response, writer = await self._start_stream(request, headers)
                await writer.send([body])
                await writer.end()
                return response
            return web.Response(text=body, content_type="application/json", headers=headers)
        if fault == "url_timeout":
            return self._bad_request(url_timeout(chat.image_url), headers)
        if fault == "echo_key":  # a proxy's error page that quotes the request, Authorization included
            page = ("<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><p>upstream failed; "
                    f"request was: POST /v1/chat/completions Authorization: {request.headers.get('Authorization', '')} "
                    "Content-Type: application/json</p></body></html>")
            return web.Response(text=page, status=502, content_type="text/html", headers=headers)
        if fault == "huge":  # a broken endpoint that never stops talking: 12 MB, chunked, no Content-Length
            response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(b'{"choices": [{"message": {"content": "')
            for _ in range(12):
                await response.write(b"x" * (1024 * 1024))
            await response.write(b'"}}]}')
            await response.write_eof()
            return response
        if fault == "gemini_429":  # a JSON list, the wait only in the body's RetryInfo
            return web.json_response(gemini_429_body(self.settings.retry_after), status=429, headers=headers)
        if fault == "quota":  # OpenAI's 429 for an account out of credit: retrying does not help
            body = _error_body("You exceeded your current quota, please check your plan and billing details.", "insufficient_quota", "insufficient_quota")
            return web.json_response(body, status=429, headers=headers)
        return self._status_response(int(fault), headers, model=chat.model)

    def _status_response(self, status: int, headers: dict[str, str], model: str = "") -> web.Response:
        if status == 429:
            type_, code = "rate_limit_error", "rate_limit_exceeded"
            message = (f"Rate limit reached for requests per min (RPM) on {model or 'this model'}. "
                       f"Please try again in {self.settings.retry_after:g}s.")
        else:
            generic = ("server_error" if status >= 500 else "invalid_request_error", None, f"Simulated {status} error.")
            type_, code, message = _STATUS_ERRORS.get(status, generic)
        if status in (429, 503):
            headers = {**headers, **retry_after_headers(self.settings.retry_after, self.settings.retry_after_form)}
        return web.json_response(_error_body(message, type_, code), status=status, headers=headers)

    @staticmethod
    def _bad_request(exc: BadRequest, headers: dict[str, str]) -> web.Response:
        return web.json_response(_error_body(exc.message, "invalid_request_error", exc.code, **exc.more), status=400, headers=headers)

    @staticmethod
    def _completion(n: int, model: str, caption: str, finish_reason: str, usage: dict[str, int]) -> dict[str, Any]:
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

    @staticmethod
    def _malformed_body(variant: str, n: int, model: str) -> str:
        if variant == "not_json":  # a body cut off mid-way
            return f'{{"id": "chatcmpl-sim-{n}", "object": "chat.completion", "choices": [{{"index": 0, "mess'
        if variant == "error_object":
            return json.dumps(_error_body("The server had an error processing your request.", "server_error", None))
        completion = Simulator._completion(n, model, "", "stop", count_usage(1, 1, [], ""))
        if variant == "no_choices":
            del completion["choices"]
        else:  # null_content
            completion["choices"][0]["message"]["content"] = None
        return json.dumps(completion)

    async def _start_stream(self, request: web.Request, headers: dict[str, str]) -> tuple[web.StreamResponse, SSEWriter]:
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response, SSEWriter(response, self.settings.stream_style, self._stream_rng)

    async def _stream(self, request: web.Request, completion: dict[str, Any], include_usage: bool,
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
        self.stats.by_status[fault] += 1  # truncated or stall: the handler never returns normally
        if fault == "stall":
            await self._hang()
        await _drop_connection(request)

    async def _hang(self) -> None:
        """Wait hang_seconds, or until the simulator stops."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.settings.hang_seconds)


# --- ways to run it ----------------------------------------------------------


class SimulatorHandle:
    """What `serve_in_thread` yields; every method is safe to call from any thread."""

    def __init__(self, simulator: Simulator, loop: asyncio.AbstractEventLoop):
        self._simulator = simulator
        self._loop = loop
        self.base_url: str = simulator.base_url or ""
        self.root_url = self.base_url.removesuffix("/v1")

    def image_url(self, width: int, height: int, extension: str = "png", **query: Any) -> str:
        """The URL of a generated test image, e.g. image_url(64, 48, "jpg", redirect=2)."""
        if extension not in FORMATS:
            raise ValueError(f"extension must be one of {', '.join(FORMATS)}")
        args = "&".join(f"{name}={value}" for name, value in query.items())
        return f"{self.root_url}/_sim/images/{width}x{height}.{extension}" + (f"?{args}" if args else "")

    def stats(self) -> dict[str, Any]:
        return self._on_loop(self._simulator.stats.snapshot)

    def configure(self, **knobs: Any) -> None:
        self._on_loop(lambda: self._simulator.configure(**knobs))

    def reset(self) -> None:
        self._on_loop(self._simulator.reset_stats)

    def _on_loop(self, fn: Any) -> Any:
        async def call() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=10)


@contextlib.contextmanager
def serve_in_thread(settings: SimulatorSettings | None = None) -> Iterator[SimulatorHandle]:
    """Run a simulator on 127.0.0.1:<free port> in a background thread with its own loop."""
    simulator = Simulator(settings)
    ready: concurrent.futures.Future[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = concurrent.futures.Future()

    async def serve() -> None:
        stop = asyncio.Event()
        try:
            await simulator.start("127.0.0.1", 0)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result((asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await simulator.stop()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="pipeline-simulator", daemon=True)
    thread.start()
    loop, stop = ready.result(timeout=10)
    try:
        yield SimulatorHandle(simulator, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)


def _write_atomically(path: str, text: str) -> None:
    """A poller must never read half a URL."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(tmp, path)


async def _serve_until_signal(simulator: Simulator, host: str, port: int, ready_file: str | None) -> int:
    try:
        base_url = await simulator.start(host, port)
    except OSError as exc:
        print(f"simulator: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if ready_file:
            _write_atomically(ready_file, base_url)
        print(f"simulator listening on {base_url}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await simulator.stop()
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline simulate",
        description="Serve a fake OpenAI-compatible vision API on loopback, with faults on demand. "
        "Prints 'simulator listening on http://HOST:PORT/v1' once ready; stops on SIGTERM or Ctrl-C.",
    )
    default = SimulatorSettings()
    add = parser.add_argument
    add("--host", default="127.0.0.1", choices=sorted(LOOPBACK_HOSTS), help="loopback address to bind (default: %(default)s)")
    add("--port", type=int, default=0, help="port; 0 picks a free one (default: %(default)s)")
    add("--ready-file", metavar="PATH", help="write the base URL to PATH once listening")
    add("--latency", type=float, default=default.latency, metavar="SECONDS", help="delay before every answer")
    add("--jitter", type=float, default=default.jitter, metavar="SECONDS", help="uniform +/- added to --latency")
    for name, what in [("429", "a 429 Too Many Requests"), ("5xx", "a 500, 502, 503 or 529"), ("reset", "a dropped connection"),
                       ("hang", "no answer at all"), ("malformed", "a 200 with an unusable body")]:
        add(f"--rate-{name}", type=float, default=0.0, metavar="P", help=f"share of requests (0-1) that get {what}")
    add("--hang-seconds", type=float, default=default.hang_seconds, metavar="SECONDS", help="how long a hung request, or a stalled stream, stays open (default: %(default)s)")
    add("--retry-after", type=float, default=default.retry_after, metavar="SECONDS", help="wait advertised by 429/503 (default: %(default)s)")
    add("--retry-after-form", choices=RETRY_AFTER_FORMS, default=default.retry_after_form,
        help="Retry-After: N, Retry-After: <HTTP date>, retry-after-ms: N, or no header (default: %(default)s)")
    for name, what in [("stream-error", "an error event inside a 200 stream (OpenAI or vLLM shape)"),
                       ("truncated", "a stream cut off mid-way"), ("stall", "a stream that goes silent for --hang-seconds")]:
        add(f"--rate-{name}", type=float, default=0.0, metavar="P",
            help=f"share of requests (0-1) that get {what}; a request without stream:true is answered "
            "normally instead (truncated: the connection drops)")
    add("--fault-script", default="", metavar="LIST",
        help="comma-separated, e.g. 429,500,reset,hang,malformed,quota,url_timeout,ok: the Nth request for an image gets the Nth entry; "
        f"stream faults: {', '.join(STREAM_FAULTS)}")
    add("--stream-style", choices=STREAM_STYLES, default=default.stream_style,
        help="how streamed answers are written: line ends lf, crlf or cr; keepalive comments; multiline data; "
        "fragmented writes; no_done omits [DONE] (default: %(default)s)")
    add("--refuse-formats", default=default.refuse_formats, metavar="LIST",
        help="image types refused with Ollama's 400 'invalid image input', e.g. gif (default: none)")
    add("--header-style", choices=HEADER_STYLES, default=default.header_style,
        help="plain, or litellm: retry and rate-limit headers renamed llm_provider-*, as LiteLLM's proxy passes them (default: %(default)s)")
    add("--api-key", default=None, help="accept only this bearer token (default: any non-empty one)")
    add("--model", default=None, help=f"model id listed by /v1/models (default: {DEFAULT_MODEL})")
    add("--seed", type=int, default=default.seed, help="seed for random faults and jitter (default: %(default)s)")
    add("--fetch-timeout", type=float, default=default.fetch_timeout, metavar="SECONDS",
        help="how long to wait for an http(s) image URL before answering 400 'Timeout while downloading' (default: %(default)s)")
    add("--rpm-limit", type=int, default=0, metavar="N", help="admit at most N requests per --limit-window, else 429 (default: no limit)")
    add("--tpm-limit", type=int, default=0, metavar="N",
        help="admit at most N tokens (prompt + max_tokens) per --limit-window, else 429 (default: no limit)")
    add("--limit-window", type=float, default=default.limit_window, metavar="SECONDS",
        help="length of the sliding rate-limit window (default: %(default)s)")
    add("--limit-headers", choices=LIMIT_HEADER_FORMS, default=default.limit_headers,
        help="rate-limit headers: x-ratelimit-* (openai), anthropic-ratelimit-* (anthropic) or none (default: %(default)s)")
    add("--decode", choices=DECODE_MODES, default=default.decode,
        help="full: decode every image and describe its pixels, as a provider does; header: read only the size from "
        "the header and caption from that, so the simulator is never what limits a throughput benchmark (default: %(default)s)")
    add("--image-dir", default=None, metavar="DIR", help="serve the files in DIR at /_sim/files/PATH (test images are always at /_sim/images/WxH.png)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    knobs = {f.name: getattr(args, f.name) for f in fields(SimulatorSettings)}
    try:
        settings = SimulatorSettings(**knobs)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        return asyncio.run(_serve_until_signal(Simulator(settings), args.host, args.port, args.ready_file))
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
