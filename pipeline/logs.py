"""Logging for people and for cron: text on a terminal, one JSON object per line otherwise; the API key never shows."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO

from .secret import MIN_SECRET_LENGTH, Secret

# Attributes every LogRecord has; anything else was passed with `extra=` and goes into the JSON.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        # Underscored attributes are other libraries' (Ray's log record factory adds _ray_timestamp_ns).
        event.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        return _redact.mask(json.dumps(event, ensure_ascii=False, default=str))  # the extra fields too


class RedactFilter(logging.Filter):
    """Last line of defence: whatever a message carries, the secrets in it become ***."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[Secret] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.mask(record.getMessage()), None
        return True

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            text = secret.mask(text)
        return text


_redact = RedactFilter()


def setup_logging(log_format: str | None = None, stream: IO[str] | None = None) -> None:
    """`log_format` None: JSON when the stream is not a terminal (cron, CI), text when it is."""
    stream = stream or sys.stderr
    if log_format is None:
        log_format = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_redact)
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def redact_in_logs(secret: str | None) -> None:
    if secret and len(secret) >= MIN_SECRET_LENGTH and all(s.reveal() != secret for s in _redact.secrets):
        _redact.secrets.append(Secret(secret))
