"""Ways to run the simulator: in a thread for tests (`serve_in_thread`), or as a process (`main`, `pipeline simulate`)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

from pipeline.errors import EXIT_OK, EXIT_USAGE
from pipeline.files import write_atomically
from pipeline.simulator.assets import FORMATS
from pipeline.simulator.dialects import HEADER_STYLES
from pipeline.simulator.limits import LIMIT_HEADER_FORMS
from pipeline.simulator.server import Simulator
from pipeline.simulator.settings import BATCH_FAULTS, DECODE_MODES, DEFAULT_MODEL, RETRY_AFTER_FORMS, SimulatorSettings
from pipeline.simulator.stream import STREAM_FAULTS, STREAM_STYLES
from pipeline.simulator.vision import LOOPBACK_HOSTS


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
            write_atomically(Path(ready_file), base_url.encode(), durable=False)  # a poller never reads half a URL
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
    add("--batch-seconds", type=float, default=default.batch_seconds, metavar="SECONDS",
        help="how long a batch (OpenAI /v1/batches, Anthropic /v1/messages/batches) stays in progress (default: %(default)s)")
    add("--batch-finalizing-seconds", type=float, default=default.batch_finalizing_seconds, metavar="SECONDS",
        help="how long a finished OpenAI batch stays finalizing (default: %(default)s)")
    add("--batch-fault", choices=BATCH_FAULTS, default=default.batch_fault,
        help="expire: answer half of each batch and expire the rest; fail_validation: reject every batch at validation")
    add("--batch-break-download", action="store_true", help="cut the first download of every batch result file off midway")
    add("--ignore-response-format", action="store_true",
        help="ignore response_format, as Anthropic's OpenAI layer does: prose, or fenced JSON when the prompt spells out a schema")
    add("--invalid-answers", type=int, default=0, metavar="N", help="the first N structured answers to each image break the schema")
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
