"""Bench inputs, generated once into bench/.cache/ (git-ignored) and reused by every run.

- tiny/: distinct 32x32 PNGs (a few hundred bytes each), for latency- and rate-bound runs;
- photos/: 1200x900 JPEGs of 100-300 KB that look like photographs to an encoder
  (a smooth colour field under fine texture), small enough to be sent byte for byte;
- CSV manifests over them, and URL-only manifests (`http://127.0.0.1:9/x/{i}.png`) that
  no run ever fetches: without --fetch-remote they are passed through as they are.

Each set is built in a temporary folder and renamed into place, so an interrupted
generation is never mistaken for a finished one. `python bench/data.py` builds the full set.
"""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageFilter

CACHE = Path(__file__).resolve().parent / ".cache"
VERSION = "2"  # bump when a generator changes, so stale caches are rebuilt

TINY_SIDE = 32
PHOTO_SIZE = (1200, 900)
URL_TEMPLATE = "http://127.0.0.1:9/x/{i}.png"  # port 9 (discard): never contacted


def _build(name: str, make) -> Path:
    """CACHE/name, made by make(tmp_folder) unless a finished one is there."""
    final = CACHE / f"{name}.v{VERSION}"
    if final.is_dir():
        return final
    tmp = CACHE / f".{name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        make(tmp)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_manifest(path: Path, header: list[str], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# --- tiny PNGs -------------------------------------------------------------------


def tiny_image(i: int) -> bytes:
    """A 32x32 PNG whose pixels spell out i, so no two are alike."""
    rng = random.Random(i)
    img = Image.new("RGB", (TINY_SIDE, TINY_SIDE), tuple(rng.randrange(256) for _ in range(3)))
    for bit in range(24):
        if i >> bit & 1:
            img.putpixel((bit % TINY_SIDE, bit // TINY_SIDE), (255 - bit * 8, bit * 8, 128))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def tiny_set(n: int) -> Path:
    """A folder of n tiny PNGs with `manifest.csv` (column image, relative paths)."""

    def make(folder: Path) -> None:
        (folder / "img").mkdir()
        names = []
        for i in range(n):
            name = f"img/{i:06d}.png"
            (folder / name).write_bytes(tiny_image(i))
            names.append([name])
        _write_manifest(folder / "manifest.csv", ["image"], names)

    return _build(f"tiny-{n}", make)


def tiny_manifest(n: int, of: int) -> Path:
    """A manifest over the first n images of tiny_set(of) (no second copy of the images)."""
    folder = tiny_set(of)
    path = folder / f"manifest-{n}.csv"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        _write_manifest(tmp, ["image"], ([f"img/{i:06d}.png"] for i in range(n)))
        tmp.rename(path)
    return path


# --- photographs -------------------------------------------------------------------


def _texture(rng: random.Random, blur: float) -> Image.Image:
    size = (PHOTO_SIZE[0] + 400, PHOTO_SIZE[1] + 300)
    bands = [Image.effect_noise(size, 64) for _ in range(3)]
    return Image.merge("RGB", bands).filter(ImageFilter.GaussianBlur(blur))


def photo_set(n: int, seed: int = 1) -> Path:
    """n JPEGs of 1200x900 at quality 90, 100-300 KB each, with `manifest.csv`."""

    def make(folder: Path) -> None:
        rng = random.Random(seed)
        textures = [_texture(rng, blur) for blur in (1.0, 1.3, 1.7, 2.1)]
        (folder / "img").mkdir()
        names = []
        for i in range(n):
            # A smooth colour field (sky, walls, skin) under fine texture (foliage, grain).
            small = Image.frombytes("RGB", (6, 5), bytes(rng.randrange(256) for _ in range(90)))
            field = small.resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
            x, y = rng.randrange(400), rng.randrange(300)
            texture = textures[i % len(textures)].crop((x, y, x + PHOTO_SIZE[0], y + PHOTO_SIZE[1]))
            img = Image.blend(field, texture, rng.uniform(0.35, 0.6))
            name = f"img/{i:05d}.jpg"
            img.save(folder / name, "JPEG", quality=90)
            names.append([name])
        _write_manifest(folder / "manifest.csv", ["image"], names)

    return _build(f"photos-{n}", make)


# --- URL rows -------------------------------------------------------------------


def url_manifest(n: int, with_ids: bool = False) -> Path:
    """n URL rows; with_ids adds an `id` column (`r0000001`), as a resumable manifest has."""

    def make(folder: Path) -> None:
        if with_ids:
            rows = ([f"r{i:07d}", URL_TEMPLATE.format(i=i)] for i in range(n))
            _write_manifest(folder / "manifest.csv", ["id", "image"], rows)
        else:
            _write_manifest(folder / "manifest.csv", ["image"], ([URL_TEMPLATE.format(i=i)] for i in range(n)))

    return _build(f"urls-{n}{'-ids' if with_ids else ''}", make) / "manifest.csv"


def url_ids(n: int) -> tuple[list[str], list[str]]:
    """The (ids, images) url_manifest(n, with_ids=True) holds, in order."""
    return [f"r{i:07d}" for i in range(n)], [URL_TEMPLATE.format(i=i) for i in range(n)]


if __name__ == "__main__":
    print(tiny_set(10_000), photo_set(2_000), url_manifest(1_000_000), url_manifest(1_000_000, with_ids=True), sep="\n")
