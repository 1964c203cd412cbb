"""Image preparation: turn any image the loader accepts into one a vision provider accepts.

Providers take JPEG, PNG, WebP and static GIF; Anthropic refuses more than 5 MB
or 8000 px and scales anything over 1568 px down anyway. An image that already
fits is sent byte for byte, checked from its header alone. Anything else is
decoded once, turned upright, flattened to 8-bit RGB(A), scaled down and saved
as PNG (with transparency) or JPEG, stepping quality then size down until the
base64 payload fits.

Pure and synchronous: images.py calls it inside its worker thread.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from dataclasses import dataclass
from io import BytesIO

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, ImageUnreadableError

# We refuse oversized images ourselves (_check_pixels) before any decode, with a
# clear error row; Pillow's own warning would only be noise on stderr.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


@dataclass(frozen=True, slots=True)
class PreparedBytes:
    data: bytes  # what to send
    mime: str  # image/jpeg | image/png | image/webp | image/gif
    width: int  # size sent
    height: int
    original_width: int  # size in the file's header, before EXIF rotation
    original_height: int
    changed: bool  # False: `data` is the input, byte for byte


_PILLOW_FORMATS = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
    "image/avif": "AVIF",  # Pillow's own plugin
    "image/heic": "HEIF",  # pillow-heif's (the [heic] extra)
    "image/heif": "HEIF",
}
# Formats providers accept, and the modes each one sends without surprises.
_SENDABLE_MODES = {
    "JPEG": {"L", "RGB"},
    "PNG": {"1", "L", "P", "RGB", "RGBA"},
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"L", "P"},
}
_JPEG_QUALITIES = (90, 80, 70, 60)
_SHRINK_STEP = 0.75
_MAX_SHRINKS = 12  # 0.75**12 is about 3%: a 1568 px edge ends near 50 px


_ALL_SENDABLE = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


def prepare_image(
    data: bytes,
    mime: str,
    *,
    max_side: int = 1568,
    max_bytes: int = 5 * 1024 * 1024,
    max_pixels: int = 100_000_000,
    accepted: frozenset[str] = _ALL_SENDABLE,
) -> PreparedBytes:
    """`data` as a provider will take it; `max_bytes` bounds the base64 text, not the raw bytes.

    `accepted`: the MIME types the provider takes as they are (providers.accepted_image_formats).
    """
    pillow_format = _PILLOW_FORMATS.get(mime)
    if pillow_format == "HEIF":
        _need_heif()
    try:
        with Image.open(BytesIO(data), formats=[pillow_format] if pillow_format else None) as img:
            width, height = img.size
            _check_pixels(width, height, max_pixels)
            if not ends_whole(data, mime):
                img.load()  # no end marker: decode to be sure (a truncated file raises here, before any request)
            if mime in accepted and _sendable_as_is(img, len(data), max_side, max_bytes):
                return PreparedBytes(data, mime, width, height, width, height, changed=False)
            fixed = _decode_upright_rgb(img, max_side)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"image is too large to decode safely ({exc}); resize it before captioning"
        ) from exc
    except UnidentifiedImageError as exc:  # Pillow's own text names a BytesIO object, which helps nobody
        raise ImageUnreadableError(f"corrupt or truncated {_name(mime)}: Pillow cannot parse its header") from exc
    except (OSError, ValueError, EOFError, SyntaxError) as exc:  # what Pillow's decoders raise on bad data
        raise ImageUnreadableError(f"corrupt or truncated {_name(mime)}: {exc}") from exc
    out_format = "PNG" if fixed.mode == "RGBA" else "JPEG"
    fixed, encoded = _encode_to_fit(fixed, out_format, max_bytes)
    return PreparedBytes(encoded, f"image/{out_format.lower()}", *fixed.size, width, height, changed=True)


@lru_cache(maxsize=1)
def _heif_opener() -> bool:
    """Register pillow-heif's opener with Pillow, the first time a HEIC image comes (its import is not free)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def _need_heif() -> None:
    if not _heif_opener():
        raise ImageUnreadableError("a HEIC/HEIF image (an iPhone photo): reading it needs pillow-heif; "
                                   "install it with pip install 'pipeline[heic]' (make installs it), or convert the file to JPEG")


def ends_whole(data: bytes, mime: str) -> bool:
    """Whether the file ends as its format says a whole file ends: microseconds, no decode.

    JPEG: an EOI marker (FF D9) near the end (it cannot occur inside entropy-coded data);
    PNG: the IEND chunk; GIF: its 0x3B trailer; WebP: the RIFF size matches. False means
    "decode to be sure", not "broken": a phone may append a video after a JPEG's EOI.
    """
    tail = data[-1024:]
    if mime == "image/jpeg":
        return b"\xff\xd9" in tail
    if mime == "image/png":
        return b"IEND\xaeB`\x82" in tail[-64:]
    if mime == "image/gif":
        return tail.rstrip(b"\0").endswith(b";")
    if mime == "image/webp":
        return len(data) >= 12 and int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return True  # BMP and TIFF are decoded anyway: providers take neither as it is


def _name(mime: str) -> str:
    """image/webp -> WebP: the name people know a format by."""
    return {"image/webp": "WebP", "image/heif": "HEIF"}.get(mime, mime.partition("/")[2].upper())


def base64_len(num_bytes: int) -> int:
    return 4 * ((num_bytes + 2) // 3)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning would not stop the decode.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > limit:
        raise ImageTooLargeError(
            f"image is {width}×{height} ({width * height / 1e6:.0f} megapixels), more than the "
            f"{limit / 1e6:.3g} megapixel limit; resize it before captioning"
        )


def _sendable_as_is(img: Image.Image, num_bytes: int, max_side: int, max_bytes: int) -> bool:
    """Decided from the header alone: no pixel is decoded."""
    return (
        img.mode in _SENDABLE_MODES.get(img.format or "", ())
        # A palette PNG's transparency (tRNS) is the case providers handle worst.
        and not (img.format == "PNG" and img.mode == "P" and "transparency" in img.info)
        and max(img.size) <= max_side
        and base64_len(num_bytes) <= max_bytes
        and _orientation(img) == 1
        and not getattr(img, "is_animated", False)  # last: a GIF finds out by reading on
    )


def _orientation(img: Image.Image) -> int:
    # A PNG may put its EXIF after the pixels, and getexif() would decode them all to find it.
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return img.getexif().get(ExifTags.Base.Orientation, 1)


def _decode_upright_rgb(img: Image.Image, max_side: int) -> Image.Image:
    """The first frame, upright, 8-bit RGB (RGBA if it has transparency), long edge <= max_side."""
    if max(img.size) > max_side:
        # JPEG only: decode at 1/2, 1/4 or 1/8 scale, never below the target size.
        img.draft(None, _fit(img.size, max_side))
    img.load()
    upright = ImageOps.exif_transpose(img)
    if upright.mode.startswith("I"):  # 16/32-bit grey: convert("L") would clip at 255, not scale
        upright = upright.convert("I").point(lambda v: v / 256).convert("L")
    has_alpha = "A" in upright.getbands() or "a" in upright.getbands() or "transparency" in upright.info
    rgb = upright.convert("RGBA" if has_alpha else "RGB")
    if max(rgb.size) > max_side:
        rgb = rgb.resize(_fit(rgb.size, max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _encode_to_fit(img: Image.Image, out_format: str, max_bytes: int) -> tuple[Image.Image, bytes]:
    """Quality steps first (JPEG), then size; bounded, so a tiny max_bytes ends in an error."""
    qualities: tuple[int | None, ...] = _JPEG_QUALITIES if out_format == "JPEG" else (None,)
    for _ in range(_MAX_SHRINKS + 1):
        for quality in qualities:
            encoded = _encode(img, out_format, quality)
            if base64_len(len(encoded)) <= max_bytes:
                return img, encoded
        qualities = qualities[-1:]  # once at the lowest quality, only the size changes
        tried = img.size
        smaller = (max(1, round(img.width * _SHRINK_STEP)), max(1, round(img.height * _SHRINK_STEP)))
        img = img.resize(smaller, Image.Resampling.LANCZOS)
    raise ImageTooLargeError(
        f"image does not fit in {max_bytes} bytes of base64 even at {tried[0]}×{tried[1]}; "
        "raise the size limit or send a smaller image"
    )


def _encode(img: Image.Image, out_format: str, quality: int | None) -> bytes:
    buf = BytesIO()
    if quality is None:
        img.save(buf, out_format)
    else:
        img.save(buf, out_format, quality=quality)
    return buf.getvalue()
