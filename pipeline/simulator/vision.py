"""The simulator's "model": get the image, decode it, describe its pixels, count tokens.

Deliberately dumb and deterministic: the same bytes always give the same
caption, so tests can assert on it and a benchmark measures the pipeline, not
the model. Images come from data: URLs or from loopback http(s) only, so the
simulator can never reach the internet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import math
import re
from collections import Counter
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, ImageStat

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

# A dozen colour names a person would use; each pixel goes to the nearest one.
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 220, 0),
    "green": (40, 170, 60),
    "cyan": (0, 200, 220),
    "blue": (30, 80, 220),
    "purple": (130, 50, 180),
    "pink": (255, 130, 180),
    "brown": (130, 80, 40),
}

_SAMPLE_SIDE = 32
# A colour is named after the first one only if it covers this share of the image.
_MIN_SHARE = 0.2

_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?;base64,(?P<payload>.*)", re.DOTALL)


class UndecodableImage(Exception):
    """The bytes (or the data: URL around them) are not an image Pillow can load."""


class UnreachableImage(Exception):
    """An image URL the simulator will not or cannot download."""


class ImageFetchTimeout(UnreachableImage):
    """The download took longer than the simulator waits."""


async def image_bytes(url: str, session: aiohttp.ClientSession, timeout: float = 10.0) -> bytes:
    if url.startswith("data:"):
        return decode_data_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise UnreachableImage(url)  # never the internet
    try:
        # No redirects: a loopback server must not send us elsewhere.
        async with session.get(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if response.status != 200:
                raise UnreachableImage(f"{url}: HTTP {response.status}")
            return await response.read()
    except asyncio.TimeoutError as exc:
        raise ImageFetchTimeout(url) from exc
    except (aiohttp.ClientError, ValueError) as exc:
        raise UnreachableImage(f"{url}: {exc}") from exc


def decode_data_url(url: str) -> bytes:
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise UndecodableImage("not a base64 data: URL")
    payload = match["payload"]
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        pass  # perhaps line breaks (MIME-style base64): strip whitespace only then, as it costs more than the decode
    try:
        return base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UndecodableImage(f"bad base64: {exc}") from exc


def data_url_head(url: str, size: int = 16 * 1024) -> bytes:
    """The first `size` bytes of a base64 data: URL's image, decoding no more than that; b"" if it does not decode so."""
    match = _DATA_URL.match(url[: 64 + size * 4 // 3])  # scheme and MIME type, then the base64 of `size` bytes
    payload = match["payload"] if match else ""
    try:
        return base64.b64decode(payload[: len(payload) // 4 * 4], validate=True)
    except (binascii.Error, ValueError):
        return b""


def load_image(data: bytes) -> Image.Image:
    """Open and fully decode, as a provider does before the model sees anything."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    # Pillow signals corrupt input with many exception types (OSError,
    # SyntaxError, ValueError, DecompressionBombError...): all mean the same here.
    except Exception as exc:
        raise UndecodableImage(str(exc)) from exc
    return img


def _sample(img: Image.Image) -> Image.Image:
    """A 32x32 RGB thumbnail on a white background (transparent areas read as white)."""
    small = img.convert("RGBA").resize((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.BOX)
    background = Image.new("RGBA", small.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, small).convert("RGB")


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    return min(PALETTE, key=lambda name: math.dist(rgb, PALETTE[name]))


def orientation(width: int, height: int) -> str:
    if width > height:
        return "landscape"
    if height > width:
        return "portrait"
    return "square"


def dominant_colours(sample: Image.Image) -> list[str]:
    counts: Counter[str] = Counter()
    for count, pixel in sample.getcolors(_SAMPLE_SIDE * _SAMPLE_SIDE):
        counts[_nearest_colour(pixel)] += count
    total = _SAMPLE_SIDE * _SAMPLE_SIDE
    # Ties broken by palette order, so the answer never depends on dict luck.
    ranked = sorted(counts, key=lambda name: (-counts[name], list(PALETTE).index(name)))
    return [ranked[0]] + [name for name in ranked[1:3] if counts[name] / total >= _MIN_SHARE]


def brightness(sample: Image.Image) -> str:
    mean = ImageStat.Stat(sample.convert("L")).mean[0]
    if mean < 85:
        return "dark"
    if mean < 170:
        return "medium"
    return "bright"


def _join(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def describe(img: Image.Image) -> str:
    """E.g. 'A 512×384 landscape image, mostly blue and white, bright overall.'"""
    width, height = img.size
    sample = _sample(img)
    return (
        f"A {width}×{height} {orientation(width, height)} image, "
        f"mostly {_join(dominant_colours(sample))}, {brightness(sample)} overall."
    )


def caption_image(data: bytes) -> tuple[int, int, str]:
    """(width, height, caption); CPU-bound, so the server runs it in a thread."""
    image = load_image(data)
    return image.width, image.height, describe(image)


def caption_from_header(data: bytes) -> tuple[int, int, str]:
    """(width, height, caption) from the image header alone, no pixel decoded: the caption names size and shape only.

    A file whose header parses but whose pixels are broken passes; `caption_image` would refuse it.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # as in load_image: every Pillow failure means the same here
        raise UndecodableImage(str(exc)) from exc
    return width, height, f"A {width}×{height} {orientation(width, height)} image."


def fit_caption(caption: str, max_tokens: int | None) -> tuple[str, str]:
    """Cut to max_tokens the way a provider does; returns (text, finish_reason)."""
    if max_tokens is not None and max(1, math.ceil(len(caption) / 4)) > max_tokens:
        return caption[: max_tokens * 4], "length"
    return caption, "stop"


def count_usage(width: int, height: int, texts: list[str], caption: str) -> dict[str, int]:
    """Image tokens = ceil(pixels / 750), text and completion tokens = ceil(chars / 4)."""
    prompt = math.ceil(width * height / 750) + math.ceil(sum(map(len, texts)) / 4)
    completion = max(1, math.ceil(len(caption) / 4))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
