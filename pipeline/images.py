"""Image loading: a manifest row becomes the `image_url` a request sends.

Remote URLs pass through untouched. Local files are read with aiofiles, then
checked and encoded in one worker thread, so the event loop stays free for the
requests in flight. The MIME type comes from the file's first bytes, never its
name: a PNG called `x.jpg` is sent as image/png.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import hashlib
import os
from io import BytesIO

import aiofiles
from PIL import Image, UnidentifiedImageError

from .errors import ImageEmptyError, ImageMissingError, ImageUnreadableError, NotAnImageError
from .records import ManifestRow, PreparedImage

# MIME type -> (name for people, Pillow's format name).
_FORMATS = {
    "image/jpeg": ("JPEG", "JPEG"),
    "image/png": ("PNG", "PNG"),
    "image/gif": ("GIF", "GIF"),
    "image/webp": ("WebP", "WEBP"),
    "image/bmp": ("BMP", "BMP"),
    "image/tiff": ("TIFF", "TIFF"),
}
_KNOWN = "/".join(name for name, _ in _FORMATS.values())


def sniff_mime(head: bytes) -> str | None:
    """The image MIME type the magic bytes at the start of a file announce, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM"):
        return "image/bmp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image/tiff"
    return None


async def load_image(row: ManifestRow) -> PreparedImage:
    """Read and check a row's image; raise an ImageError a person can act on."""
    if row.is_remote:
        return PreparedImage(url=row.source)
    path = os.path.abspath(row.source)
    data = await _read(path)
    if not data:
        raise ImageEmptyError(f"image file is empty (0 bytes): {path}")
    return await asyncio.to_thread(_prepare, path, data)


async def _read(path: str) -> bytes:
    try:
        async with aiofiles.open(path, "rb") as f:
            return await f.read()
    except FileNotFoundError as exc:
        raise ImageMissingError(f"image file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ImageUnreadableError(f"image path is a directory, not a file: {path}") from exc
    except PermissionError as exc:
        raise ImageUnreadableError(f"cannot read image file (permission denied): {path}") from exc
    except OSError as exc:
        raise ImageUnreadableError(f"cannot read image file ({exc.strerror or exc}): {path}") from exc


def _prepare(path: str, data: bytes) -> PreparedImage:
    """The CPU-bound part, run in a worker thread: sniff, check the header, hash, encode."""
    mime = sniff_mime(data[:16])
    if mime is None:
        raise NotAnImageError(f"{path} is not an image ({_describe(data)}, not {_KNOWN})")
    _check_header(path, data, mime)
    b64 = base64.b64encode(data).decode("ascii")
    return PreparedImage(
        url=f"data:{mime};base64,{b64}",
        mime=mime,
        sha256=hashlib.sha256(data).hexdigest(),
        num_bytes=len(data),
    )


def _check_header(path: str, data: bytes, mime: str) -> None:
    """Let Pillow parse the header (size, mode) without decoding any pixels."""
    name, pillow_format = _FORMATS[mime]
    try:
        with Image.open(BytesIO(data), formats=[pillow_format]) as im:
            _ = im.size  # read from the header; no pixels are decoded
    except Image.DecompressionBombError as exc:
        raise ImageUnreadableError(f"{path} is too large to load safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        # Pillow's own text here names a BytesIO object, which helps nobody.
        raise ImageUnreadableError(
            f"{path} is a corrupt or truncated {name}: Pillow cannot parse its header"
        ) from exc
    except Exception as exc:  # Pillow's parsers raise OSError, ValueError, EOFError... on bad input
        raise ImageUnreadableError(f"{path} is a corrupt or truncated {name}: {exc}") from exc


def _describe(data: bytes) -> str:
    """What a non-image file starts with, in words: text is quoted, anything else shown as hex."""
    try:
        # Incremental, so a multi-byte character cut off at byte 200 is not an error.
        text = codecs.getincrementaldecoder("utf-8-sig")().decode(data[:200])
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        first_line = text.strip().partition("\n")[0].strip()
        return f"its content is text starting {first_line[:40]!r}" if first_line else "its content is blank"
    return f"it starts with bytes {data[:8].hex(' ')}"
