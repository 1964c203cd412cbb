"""The values that flow between stages: manifest row -> prepared image -> completion -> result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~2 µs more per row, and a manifest has millions
class ManifestRow:
    """One manifest entry, as the reader understood it.

    `problem` is set when the entry cannot be captioned (no image value, a line
    that does not parse); such a row still becomes exactly one error row.
    """

    line: int  # 1-based line (or record) number in the manifest, for messages
    id: str
    image: str  # the image value as written in the manifest
    source: str  # absolute local path, or the http(s) URL
    prompt: str | None = None  # per-row prompt override
    extra: dict[str, Any] = field(default_factory=dict)  # passthrough columns
    problem: str | None = None
    task: str | None = None  # the job file's task this row asks (tasks.py); None for a job without tasks
    share: int = 1  # rows made from one manifest row, one per task left: its image is prepared once for them all

    @property
    def is_remote(self) -> bool:
        return self.source.startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """What goes into the request's `image_url.url`."""

    # A local file's data: URL as ASCII bytes, spliced into the request body as they are (each copy of a
    # 300 KB photo's base64 costs as much CPU as the encoding); a remote image's URL itself, as text.
    url: str | bytes
    mime: str | None = None  # sniffed from the content, None for pass-through URLs
    sha256: str | None = None  # of the image bytes sent, None for pass-through URLs
    num_bytes: int | None = None  # of the image bytes sent
    width: int | None = None  # size sent
    height: int | None = None
    original_width: int | None = None  # size of the file as found
    original_height: int | None = None
    file_size: int | None = None  # of a local file as read, and its modification time: a rerun re-captions a changed file
    file_mtime_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """The useful part of a successful chat completion."""

    caption: str
    finish_reason: str | None
    model: str | None
    response_id: str | None
    usage: dict[str, Any]
    time_to_first_token: float | None = None  # seconds, streamed answers only
