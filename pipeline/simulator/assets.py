"""What the simulator serves besides the API: generated test images and files from a folder.

`GET /_sim/images/{W}x{H}.{png|jpg|gif|webp}` is a one-colour image of that
size; the colour follows from W and H (see `generated_colour`), so a test can
predict the caption. `GET /_sim/files/{path}` is a file from `image_dir`, never
from outside it. Both misbehave on request, the way image hosts do:
`?redirect=N` (N chained 302s first), then `?slow=SECONDS` (a pause before the
final answer), then `?status=CODE` (that status instead) or `?html=1` (a small
HTML page instead, as a broken image link often returns). Other query
parameters are ignored, so `?v=2` makes a distinct URL for the same image.

None of this counts in the chat-completion stats.
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Mapping

from aiohttp import web
from PIL import Image

from pipeline.simulator.vision import PALETTE

MAX_PIXELS = 50_000_000
FORMATS: dict[str, tuple[str, str]] = {  # extension -> (Pillow format, content type)
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "gif": ("GIF", "image/gif"),
    "webp": ("WEBP", "image/webp"),
}
_MAX_SIDE = {"WEBP": 16383, "GIF": 65535, "JPEG": 65535, "PNG": 1 << 31}
_IMAGE_NAME = re.compile(r"(\d{1,9})x(\d{1,9})\.(\w+)")
_MAX_REDIRECTS = 50
_MAX_SLOW = 3600.0
BROKEN_LINK_HTML = (
    "<!DOCTYPE html>\n<html><head><title>Image not available</title></head>\n"
    "<body><h1>Image not available</h1><p>The image you requested has moved or been removed.</p></body></html>\n"
)


def generated_colour(width: int, height: int) -> str:
    """The palette colour of the generated W x H image."""
    return list(PALETTE)[(width * 7 + height * 13) % len(PALETTE)]


@functools.lru_cache(maxsize=32)
def generated_image(width: int, height: int, extension: str) -> bytes:
    """The encoded W x H image; CPU-bound for big sizes, so the server runs it in a thread."""
    pillow_format = FORMATS[extension][0]
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), PALETTE[generated_colour(width, height)]).save(buffer, pillow_format)
    return buffer.getvalue()


@dataclass(frozen=True)
class Misbehaviour:
    redirect: int = 0
    slow: float = 0.0
    status: int = 200
    html: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Misbehaviour:
        try:
            redirect = int(query.get("redirect", 0))
            slow = float(query.get("slow", 0))
            status = int(query.get("status", 200))
        except ValueError as exc:
            raise ValueError(f"bad query parameter: {exc}") from None
        if not 0 <= redirect <= _MAX_REDIRECTS:
            raise ValueError(f"redirect must be 0 to {_MAX_REDIRECTS}")
        if not (math.isfinite(slow) and 0 <= slow <= _MAX_SLOW):
            raise ValueError(f"slow must be 0 to {_MAX_SLOW:g} seconds")
        if not 200 <= status <= 599:
            raise ValueError("status must be 200 to 599")
        return cls(redirect, slow, status, query.get("html", "0").lower() in ("1", "true", "yes"))


class AssetRoutes:
    """The two GET routes; `image_dir` reads the current setting, which may change while serving."""

    def __init__(self, image_dir: Callable[[], str | None]):
        self._image_dir = image_dir

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/_sim/images/{name}", self.image)
        router.add_get("/_sim/files/{path:.+}", self.file)

    async def image(self, request: web.Request) -> web.StreamResponse:
        match = _IMAGE_NAME.fullmatch(request.match_info["name"])
        if match is None or match[3].lower() not in FORMATS:
            return _text(404, f"No such test image; ask for /_sim/images/WxH.{{{'|'.join(FORMATS)}}}.")
        width, height, extension = int(match[1]), int(match[2]), match[3].lower()
        pillow_format, content_type = FORMATS[extension]
        if width < 1 or height < 1 or width * height > MAX_PIXELS:
            return _text(400, f"{width}x{height} is not served: each side at least 1, at most {MAX_PIXELS:,} pixels in all.")
        if max(width, height) > _MAX_SIDE[pillow_format]:
            return _text(400, f"{pillow_format} images cannot be wider or taller than {_MAX_SIDE[pillow_format]} pixels.")

        async def answer() -> web.StreamResponse:
            body = await asyncio.to_thread(generated_image, width, height, extension)
            return web.Response(body=body, content_type=content_type)

        return await _misbehave(request, answer)

    async def file(self, request: web.Request) -> web.StreamResponse:
        folder = self._image_dir()
        if folder is None:
            return _text(404, "No image_dir is configured (--image-dir).")
        root = Path(folder).resolve()
        try:
            target = (root / request.match_info["path"]).resolve()
        except (OSError, ValueError):  # e.g. a NUL byte, a symlink loop
            target = None
        # resolve() has followed '..' and symlinks, so this also refuses a link that points outside.
        if target is None or not target.is_relative_to(root) or not target.is_file():
            return _text(404, "No such file.")

        async def answer() -> web.StreamResponse:
            return web.FileResponse(target)

        return await _misbehave(request, answer)


async def _misbehave(request: web.Request, answer: Callable[[], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Redirects, then the pause, then the status or page asked for; else the real answer."""
    try:
        how = Misbehaviour.from_query(request.query)
    except ValueError as exc:
        return _text(400, str(exc))
    if how.redirect:
        query = {**request.query, "redirect": str(how.redirect - 1)}
        if how.redirect == 1:
            del query["redirect"]
        return web.Response(status=302, headers={"Location": str(request.url.with_query(query))})
    if how.slow:
        await asyncio.sleep(how.slow)
    if how.status != 200:
        return _text(how.status, f"Simulated {how.status}.")
    if how.html:
        return web.Response(text=BROKEN_LINK_HTML, content_type="text/html")
    return await answer()


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")
