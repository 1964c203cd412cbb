"""Thumbnails for the review page: where each row's image is on this machine, and a small JPEG of it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, ImageOps

from pipeline.report.data import _column
from pipeline.files import runs_path

# Why a row shows a placeholder instead of a thumbnail (the page prints these words).
NO_IMAGE, NOT_FOUND, UNREADABLE, REMOTE, NOT_EMBEDDED = "no image", "not found", "unreadable", "remote", "not embedded"


def image_roots(output_parquet: Path, images_root: Path | None) -> list[Path]:
    """Folders a relative `image` value may be relative to, most likely first. It was relative to the
    manifest's folder; the last run record beside the output names the manifest, when it still exists."""
    roots = [Path(images_root)] if images_root is not None else []
    manifest = _recorded_manifest(output_parquet)
    if manifest is not None:
        roots.append(manifest if manifest.is_dir() else manifest.parent)
    roots += [output_parquet.parent, Path.cwd()]
    unique: dict[Path, None] = {}
    for root in roots:
        unique.setdefault(root.resolve(), None)
    return list(unique)


def _recorded_manifest(output_parquet: Path) -> Path | None:
    runs = runs_path(output_parquet)
    try:
        lines = runs.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            manifest = json.loads(line).get("options", {}).get("manifest")
        except (ValueError, AttributeError):
            continue
        if isinstance(manifest, str) and Path(manifest).exists():
            return Path(manifest)
    return None


def resolve_image(value: str | None, roots: list[Path]) -> Path | str:
    """The image file a row names, or why there is none to show."""
    if not value:
        return NO_IMAGE
    if re.match(r"(?i)https?://", value):
        return REMOTE
    path = Path(value).expanduser()
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        if candidate.is_file():
            return candidate
    return NOT_FOUND


def thumbnail_jpeg(path: Path, thumb_px: int, max_bytes: int) -> bytes | None:
    """A JPEG at most thumb_px on its longer side and max_bytes long (quality, then size, give way)."""
    with Image.open(path) as im:
        im.draft("RGB", (thumb_px, thumb_px))  # a JPEG decodes at 1/2..1/8 scale: far faster for photos
        im = ImageOps.exif_transpose(im)
        im.thumbnail((thumb_px, thumb_px), reducing_gap=2.0)
        im = _flatten(im)
    side = thumb_px
    while side >= 8:
        for quality in (80, 65, 50, 35, 20):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality, optimize=True)
            if buf.tell() <= max_bytes:
                return buf.getvalue()
        side = side * 3 // 4
        im.thumbnail((side, side))
    return None


def _flatten(im: Image.Image) -> Image.Image:
    """RGB for JPEG: transparent pixels become white, not black."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, "white")
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def make_thumbnails(
    table: pa.Table, roots: list[Path], *, thumb_px: int, max_bytes: int, cap: int
) -> tuple[list[str], list[int | str]]:
    """Thumbnails as data: URLs (each image once), and per row either the index of its thumbnail
    or the reason it has none. Decoding and resizing run in threads: Pillow releases the GIL."""
    images = _column(table, "image").to_pylist()
    errors = pc.fill_null(pc.equal(table["status"], "error"), False).to_pylist()
    chosen = set(range(min(cap, len(images))))
    chosen.update([i for i, e in enumerate(errors) if e and i >= cap][:cap])

    def one(value: str) -> str:
        found = resolve_image(value, roots)
        if isinstance(found, str):
            return found
        try:
            jpeg = thumbnail_jpeg(found, thumb_px, max_bytes)
        except Exception:  # noqa: BLE001 - any file Pillow cannot turn into a thumbnail gets a placeholder
            return UNREADABLE
        return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else UNREADABLE

    wanted = sorted({images[i] for i in chosen if images[i]})
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        made = dict(zip(wanted, pool.map(one, wanted)))
    thumbs: list[str] = []
    index: dict[str, int] = {}
    refs: list[int | str] = []
    for i, value in enumerate(images):
        if not value:
            refs.append(NO_IMAGE)
        elif i not in chosen:
            refs.append(REMOTE if re.match(r"(?i)https?://", value) else NOT_EMBEDDED)
        elif made[value].startswith("data:"):
            refs.append(index.setdefault(value, len(thumbs)))
            if refs[-1] == len(thumbs):
                thumbs.append(made[value])
        else:
            refs.append(made[value])
    return thumbs, refs
