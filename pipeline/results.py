"""One output row per manifest id: its columns, and how a success or a failure becomes a row."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from .errors import PipelineError
from .records import Completion, ManifestRow, PreparedImage

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("status", pa.string()),  # 'ok' | 'error'
        ("caption", pa.string()),
        ("model", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("attempts", pa.int32()),
        ("latency_ms", pa.float64()),
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("response_id", pa.string()),
        ("completed_at", pa.timestamp("ms", tz="UTC")),
        ("image_sha256", pa.string()),
        ("fingerprint", pa.string()),  # of the request settings; a rerun skips ok rows whose fingerprint matches
        ("usage", pa.string()),  # the provider's usage object, as JSON, exactly as given
    ]
)
OUTPUT_COLUMNS = frozenset(OUTPUT_SCHEMA.names)


def ok_row(
    row: ManifestRow,
    image: PreparedImage,
    completion: Completion,
    *,
    attempts: int,
    latency_ms: float,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    usage = completion.usage
    return _row(
        row,
        status="ok",
        caption=completion.caption,
        model=completion.model,
        finish_reason=completion.finish_reason,
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        total_tokens=_int(usage.get("total_tokens")),
        attempts=attempts,
        latency_ms=round(latency_ms, 1),
        response_id=completion.response_id,
        image_sha256=image.sha256,
        fingerprint=fingerprint,
        usage=json.dumps(usage, separators=(",", ":")) if usage else None,
    )


def error_row(
    row: ManifestRow,
    error: PipelineError,
    *,
    message: str | None = None,
    attempts: int = 0,
    latency_ms: float | None = None,
    model: str | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    return _row(
        row,
        status="error",
        model=model,
        attempts=attempts,
        latency_ms=round(latency_ms, 1) if latency_ms is not None else None,
        error_type=error.error_type,
        error=str(error) if message is None else message,
        response_id=getattr(error, "request_id", None),
        fingerprint=fingerprint,
    )


def _row(row: ManifestRow, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {name: None for name in OUTPUT_SCHEMA.names}
    out.update(fields)
    out["id"] = row.id
    out["image"] = row.image
    out["completed_at"] = int(time.time() * 1000)
    for name, value in row.extra.items():
        # A manifest column that clashes with one of ours is kept under another name.
        out[f"manifest_{name}" if name in OUTPUT_COLUMNS else name] = value
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
