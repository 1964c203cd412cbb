"""One output row per manifest id (per id and task, for a job with tasks): its columns, and how a success or a failure becomes a row."""

from __future__ import annotations

import json
import time
from typing import Any

import pyarrow as pa

from .errors import PipelineError
from .records import Completion, ManifestRow, PreparedImage
from .usage import BilledUsage, billed_usage

OUTPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.string()),
        ("task", pa.string()),  # the job file's task (several per image); null for a job without tasks
        ("status", pa.string()),  # 'ok' | 'error'
        ("caption", pa.string()),
        ("model", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("total_tokens", pa.int64()),
        ("cost_usd", pa.float64()),  # from the prices file; null when the model has no price there
        ("attempts", pa.int32()),
        ("latency_ms", pa.float64()),
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("response_id", pa.string()),
        ("completed_at", pa.timestamp("ms", tz="UTC")),
        ("image_sha256", pa.string()),
        ("fingerprint", pa.string()),  # of the request settings; a rerun skips ok rows whose fingerprint matches
        ("usage", pa.string()),  # the provider's usage object, as JSON, exactly as given
        ("cached_tokens", pa.int64()),  # usage details, when the provider reports them
        ("reasoning_tokens", pa.int64()),
        ("image_tokens", pa.int64()),
        ("ttft_ms", pa.float64()),  # time to first token, streamed answers only
        ("width", pa.int32()),  # size of the image sent
        ("height", pa.int32()),
        ("original_width", pa.int32()),  # size of the image as found
        ("original_height", pa.int32()),
        ("file_size", pa.int64()),  # a local image's size and modification time when it was read (the change check)
        ("file_mtime_ns", pa.int64()),
        ("reused_from", pa.string()),  # the id whose answer this row reuses: the same image, asked the same way (dedupe.py)
    ]
)
OUTPUT_COLUMNS = frozenset(OUTPUT_SCHEMA.names)

# One output row as the writer journals it: OUTPUT_SCHEMA's columns (values as JSON types, completed_at in
# epoch milliseconds), then the manifest's passthrough columns. A plain dict, not a class: it goes to JSON as is.
OutputRow = dict[str, Any]


def ok_row(
    row: ManifestRow,
    image: PreparedImage,
    completion: Completion,
    *,
    attempts: int,
    latency_ms: float | None,  # None: answered in a batch, where one request has no latency of its own
    fingerprint: str | None = None,
    cost_usd: float | None = None,
    columns: dict[str, Any] | None = None,  # the structured answer's (--schema)
) -> OutputRow:
    return _row(
        row,
        status="ok",
        caption=completion.caption,
        model=completion.model,
        finish_reason=completion.finish_reason,
        **_usage_columns(completion.usage, billed_usage(completion.usage)),
        cost_usd=cost_usd,
        attempts=attempts,
        latency_ms=round(latency_ms, 1) if latency_ms is not None else None,
        response_id=completion.response_id,
        fingerprint=fingerprint,
        ttft_ms=round(completion.time_to_first_token * 1000, 1) if completion.time_to_first_token is not None else None,
        **_image_columns(image),
        **(columns or {}),
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
    cost_usd: float | None = None,
    image: PreparedImage | None = None,
    columns: dict[str, Any] | None = None,  # the structured answer's, as nulls: a manifest column named alike moves aside as in ok rows
) -> OutputRow:
    """A failed row; an answer that was billed but is no caption (empty, refused) keeps its tokens and cost."""
    usage = getattr(error, "usage", None) or {}
    return _row(
        row,
        status="error",
        model=getattr(error, "model", None) or model,
        finish_reason=getattr(error, "finish_reason", None),
        attempts=attempts,
        latency_ms=round(latency_ms, 1) if latency_ms is not None else None,
        error_type=error.error_type,
        error=str(error) if message is None else message,
        response_id=getattr(error, "request_id", None),
        fingerprint=fingerprint,
        cost_usd=cost_usd,
        **(_usage_columns(usage, billed_usage(usage)) if usage else {}),
        **(_image_columns(image) if image is not None else {}),
        **(columns or {}),
    )


def reused_row(row: ManifestRow, image: PreparedImage, fingerprint: str, source: dict[str, Any]) -> OutputRow:
    """A row answered by another row's answer (`source`: its id and answer columns): nothing sent, nothing billed."""
    fields = {name: value for name, value in source.items() if name != "id"}
    if fields.get("status") != "ok":
        fields["error"] = f"the same image as {source['id']}, which failed: {fields.get('error')}"
    return _row(row, **fields, attempts=0, cost_usd=0.0, fingerprint=fingerprint, reused_from=source["id"], **_image_columns(image))


def _usage_columns(usage: dict[str, Any], billed: BilledUsage) -> dict[str, Any]:
    return {
        "prompt_tokens": billed.prompt,
        "completion_tokens": billed.completion,
        "total_tokens": billed.total,
        "usage": json.dumps(usage, separators=(",", ":")) if usage else None,
        "cached_tokens": billed.cached,
        "reasoning_tokens": billed.reasoning,
        "image_tokens": billed.image,
    }


def _image_columns(image: PreparedImage) -> dict[str, Any]:
    return {
        "image_sha256": image.sha256,
        "width": image.width,
        "height": image.height,
        "original_width": image.original_width,
        "original_height": image.original_height,
        "file_size": image.file_size,
        "file_mtime_ns": image.file_mtime_ns,
    }


def _row(row: ManifestRow, **fields: Any) -> OutputRow:
    out: OutputRow = {name: None for name in OUTPUT_SCHEMA.names}
    out.update(fields)
    out["id"] = row.id
    out["image"] = row.image
    out["task"] = row.task
    out["completed_at"] = int(time.time() * 1000)
    for name, value in row.extra.items():
        # A manifest column that clashes with one of ours (or an answer's) is kept under another name.
        out[f"manifest_{name}" if name in OUTPUT_COLUMNS or name in fields else name] = value
    return out
