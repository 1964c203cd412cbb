"""Image loading: a manifest row becomes the `image_url` a request sends.

A local file is read, checked, prepared for the provider (imageprep.py) and
encoded in one worker thread, so the event loop stays free for the requests in
flight; with `--fetch-remote`, a URL is downloaded first (fetch.py guards where)
and its bytes go through the same thread work. The MIME type comes from the bytes,
never the name: a PNG called `x.jpg` is sent as image/png. Without
`--fetch-remote`, URLs pass through for the provider to fetch.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import hashlib
import math
import os

import aiohttp

from .errors import ImageEmptyError, ImageError, ImageMissingError, ImageTooLargeError, ImageUnreadableError, NotAnImageError
from .fetch import fetch_image
from .imageprep import prepare_image
from .providers import ALL_FORMATS
from .records import ManifestRow, PreparedImage
from .storage import Storage, StorageError, is_object_url

INLINE_BYTES = 64 * 1024  # files this small are read and prepared on the event loop (bench scenario f)
_KNOWN = "JPEG/PNG/GIF/WebP/BMP/TIFF/HEIC/AVIF"


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
    if head[4:8] == b"ftyp":  # ISO media: the brand says which
        return _ISO_BRANDS.get(head[8:12])
    return None


# HEIC is what iPhones save; AVIF what browsers and Android increasingly do. Both are converted before sending.
_ISO_BRANDS = {b"heic": "image/heic", b"heix": "image/heic", b"heim": "image/heic", b"heis": "image/heic",
               b"hevc": "image/heic", b"hevx": "image/heic", b"mif1": "image/heif", b"msf1": "image/heif",
               b"avif": "image/avif", b"avis": "image/avif"}


class ImageLoader:
    """Built once per run with the job's image settings; `load` is called once per row."""

    def __init__(
        self,
        *,
        max_side: int = 1568,
        max_bytes: int = 5 * 1024 * 1024,
        fetch_session: aiohttp.ClientSession | None = None,
        fetch_timeout: float = 30.0,
        accepted: frozenset[str] = ALL_FORMATS,
        inline_bytes: int = INLINE_BYTES,
        store: Storage | None = None,
    ):
        self._store = store
        self.inline_bytes = inline_bytes
        self.max_side = max_side
        self.max_bytes = max_bytes
        self.accepted = accepted  # image types the provider takes as they are; others are converted
        self._fetch_session = fetch_session
        self._fetch_timeout = fetch_timeout

    async def load(self, row: ManifestRow) -> PreparedImage:
        """Read, check and prepare a row's image; raise an ImageError a person can act on."""
        if row.is_remote:
            if self._fetch_session is None:
                return PreparedImage(url=row.source)
            # A download may be larger than what we send: it is scaled down after.
            data = await fetch_image(row.source, self._fetch_session, max_bytes=4 * self.max_bytes, timeout=self._fetch_timeout)
            return await asyncio.to_thread(self._prepare, row.source, data)
        if is_object_url(row.source):
            return await self._read_object(row.source)
        path = os.path.abspath(row.source)
        if _size(path) <= self.inline_bytes:
            # Small files: read, check and encode right here. A thread would cost more than the work: the
            # hop, and the GIL it holds while the event loop waits to send and to write the journal.
            return self._read_and_prepare(path)
        # One thread hop for the whole job: aiofiles would add three (open, read, close),
        # which cost more than the read itself for a typical photo (bench scenario b).
        return await asyncio.to_thread(self._read_and_prepare, path)

    async def _read_object(self, url: str) -> PreparedImage:
        """An object in a bucket: read whole (range-free), then prepared like a local file, in a thread."""
        if self._store is None:
            self._store = Storage()
        # A read may be larger than what is sent: it is scaled down after (as for a download).
        try:
            data, stat = await self._store.read(url, max_bytes=4 * self.max_bytes)
        except FileNotFoundError:
            raise ImageMissingError(f"image object not found: {url}") from None
        except IsADirectoryError:
            raise ImageUnreadableError(f"image URL is a folder, not an object: {url}") from None
        except PermissionError:
            raise ImageUnreadableError(f"access denied reading {url} (check the store's credentials)") from None
        except StorageError as e:
            raise ImageUnreadableError(f"cannot read {url}: {e}") from None
        except ValueError as e:
            raise ImageTooLargeError(f"{url}: {e}") from None
        except Exception as e:  # the store's own errors (network, throttling after its retries, credentials)
            raise ImageUnreadableError(f"cannot read {url}: {type(e).__name__}: {e}") from None
        return await asyncio.to_thread(self._prepare, url, data, file_size=stat.size, file_mtime_ns=stat.mtime_ns)

    def _read_and_prepare(self, path: str) -> PreparedImage:
        data, stat = _read(path)
        return self._prepare(path, data, file_size=stat.st_size, file_mtime_ns=stat.st_mtime_ns)

    def _prepare(self, where: str, data: bytes, **file_facts: int) -> PreparedImage:
        """The CPU-bound part: sniff, prepare, hash, encode. `file_facts`: a local file's size and mtime."""
        if not data:
            raise ImageEmptyError(f"image is empty (0 bytes): {where}")
        mime = sniff_mime(data[:16])
        if mime is None:
            raise NotAnImageError(f"{where} is not an image ({_describe(data)}, not {_KNOWN})")
        try:
            prepared = prepare_image(data, mime, max_side=self.max_side, max_bytes=self.max_bytes, accepted=self.accepted)
        except ImageError as e:
            raise type(e)(f"{where}: {e}") from e
        return PreparedImage(
            url=b"".join((b"data:", prepared.mime.encode("ascii"), b";base64,", base64.b64encode(prepared.data))),
            mime=prepared.mime,
            sha256=hashlib.sha256(prepared.data).hexdigest(),
            num_bytes=len(prepared.data),
            width=prepared.width,
            height=prepared.height,
            original_width=prepared.original_width,
            original_height=prepared.original_height,
            **file_facts,
        )


async def load_image(row: ManifestRow) -> PreparedImage:
    """One row with the default settings (a convenience for notebooks and tests)."""
    return await ImageLoader().load(row)


def _size(path: str) -> float:
    """The file's size, or infinity when it cannot be stat'ed (the worker thread then says why)."""
    try:
        return os.stat(path).st_size
    except OSError:
        return math.inf


def _read(path: str) -> tuple[bytes, os.stat_result]:
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError as exc:
        raise ImageMissingError(f"image file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ImageUnreadableError(f"image path is a directory, not a file: {path}") from exc
    except PermissionError as exc:
        raise ImageUnreadableError(f"cannot read image file (permission denied): {path}") from exc
    except OSError as exc:
        raise ImageUnreadableError(f"cannot read image file ({exc.strerror or exc}): {path}") from exc


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
