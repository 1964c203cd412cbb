"""The simulator's knobs and counters: every setting can change while it runs (POST /_sim/config)."""

from __future__ import annotations

import os
import random
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline.simulator.dialects import ANSWER_FAULTS, HEADER_STYLES
from pipeline.simulator.limits import LIMIT_HEADER_FORMS
from pipeline.simulator.stream import STREAM_FAULTS, STREAM_STYLES

DEFAULT_MODEL = "claude-sonnet-4-20250514"
RETRY_AFTER_FORMS = ("seconds", "http-date", "ms", "none")
DECODE_MODES = ("full", "header")
BATCH_FAULTS = ("", "expire", "fail_validation")
MALFORMED_VARIANTS = ("not_json", "error_object", "no_choices", "null_content")
NAMED_FAULTS = frozenset({"ok", "reset", "hang", "malformed", "quota", "url_timeout", "gemini_429", "echo_key", "huge", *STREAM_FAULTS, *ANSWER_FAULTS} | {f"malformed:{v}" for v in MALFORMED_VARIANTS})
MAX_BODY_BYTES = 50 * 1024 * 1024  # providers cap a request at tens of MB too
KEPT_BODIES = 1000

# status -> (error type, code, message) for scripted or random status faults.
STATUS_ERRORS: dict[int, tuple[str, str | None, str]] = {
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
    # Batch APIs (batches.py): how long a batch is in progress and finalizing, and its faults.
    batch_seconds: float = 1.0
    batch_finalizing_seconds: float = 0.0
    batch_fault: str = ""  # one of BATCH_FAULTS: "" none, "expire" half the lines, "fail_validation"
    batch_break_download: bool = False  # the first download of each result file breaks off midway
    # Structured answers (structured.py): play a provider that ignores response_format; break the first N answers per image.
    ignore_response_format: bool = False
    invalid_answers: int = 0

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
        if self.batch_fault not in BATCH_FAULTS:
            raise ValueError(f"batch_fault must be one of {', '.join(repr(f) for f in BATCH_FAULTS)}")
        if min(self.batch_seconds, self.batch_finalizing_seconds) < 0:
            raise ValueError("batch_seconds and batch_finalizing_seconds cannot be negative")
        if isinstance(self.invalid_answers, bool) or not isinstance(self.invalid_answers, int) or self.invalid_answers < 0:
            raise ValueError("invalid_answers must be a whole number, 0 for none")
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
        self.repeat_images = 0  # requests for an image sent before: retries, and twins a client that dedupes never sends
        self.bodies: deque[dict[str, Any]] = deque(maxlen=KEPT_BODIES)
        self.connections: set[int] = set()  # the TCP connections chat requests came on (a client that reuses them shows few)
        self.batches: Counter[str] = Counter()  # files_uploaded, batches_created, lines, downloads, broken_downloads, cancelled

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "by_status": dict(self.by_status),
            "faults": dict(self.faults),
            "rate_limited": self.rate_limited,
            "images": {key: dict(counts) for key, counts in self.images.items()},
            "repeat_images": self.repeat_images,
            "bodies": list(self.bodies),
            "connections": len(self.connections),
            "batches": {k: v for k, v in self.batches.items() if not k.startswith("download:")},
        }


def pick_fault(settings: SimulatorSettings, rng: random.Random, nth: int) -> str | None:
    """The script decides while it lasts; after that, one seeded draw per request."""
    script = settings.fault_script
    if nth < len(script):
        return None if script[nth] == "ok" else script[nth]
    s = settings
    draw = rng.random()
    for fault, rate in (("429", s.rate_429), ("5xx", s.rate_5xx), ("reset", s.rate_reset),
                        ("hang", s.rate_hang), ("malformed", s.rate_malformed),
                        ("stream_error", s.rate_stream_error), ("truncated", s.rate_truncated), ("stall", s.rate_stall)):
        if draw < rate:
            if fault == "5xx":
                return rng.choice(("500", "502", "503", "529"))
            if fault == "stream_error":
                return rng.choice(("stream_error", "stream_error_vllm"))
            return fault
        draw -= rate
    return None
