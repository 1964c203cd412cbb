import asyncio
import base64
import csv
import hashlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline import images
from pipeline.errors import ImageEmptyError, ImageMissingError, ImageUnreadableError, NotAnImageError
from pipeline.images import load_image, sniff_mime
from pipeline.records import ManifestRow, PreparedImage

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"


def row_for(path) -> ManifestRow:
    return ManifestRow(line=1, id="x", image=str(path), source=str(path))


def load(path) -> PreparedImage:
    return asyncio.run(load_image(row_for(path)))


def write_image(path: Path, pillow_format: str) -> bytes:
    Image.new("RGB", (12, 8), (200, 30, 60)).save(path, pillow_format)
    return path.read_bytes()


def decode_data_url(url: bytes) -> tuple[str, bytes]:
    header, _, payload = url.decode("ascii").partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return header[len("data:") : -len(";base64")], base64.b64decode(payload, validate=True)


@pytest.mark.parametrize(
    "pillow_format, suffix, mime",
    [
        ("JPEG", "jpg", "image/jpeg"),
        ("PNG", "png", "image/png"),
        ("GIF", "gif", "image/gif"),
        ("WEBP", "webp", "image/webp"),
    ],
)
def test_each_format_providers_accept_is_sent_byte_for_byte(tmp_path, pillow_format, suffix, mime):
    data = write_image(tmp_path / f"img.{suffix}", pillow_format)

    prepared = load(tmp_path / f"img.{suffix}")

    assert prepared.mime == mime
    assert prepared.num_bytes == len(data)
    assert decode_data_url(prepared.url) == (mime, data)


@pytest.mark.parametrize("pillow_format, suffix", [("BMP", "bmp"), ("TIFF", "tif")])
def test_formats_providers_refuse_are_converted(tmp_path, pillow_format, suffix):
    write_image(tmp_path / f"img.{suffix}", pillow_format)
    prepared = load(tmp_path / f"img.{suffix}")
    mime, data = decode_data_url(prepared.url)
    assert mime == prepared.mime == "image/jpeg"
    assert prepared.sha256 == hashlib.sha256(data).hexdigest()  # of the bytes sent, not the file's


def test_mime_comes_from_content_not_extension(tmp_path):
    write_image(tmp_path / "x.jpg", "PNG")

    prepared = load(tmp_path / "x.jpg")

    assert prepared.mime == "image/png"
    assert prepared.url.startswith(b"data:image/png;base64,")


def test_data_url_holds_the_exact_bytes_and_sha256_matches(tmp_path):
    data = write_image(tmp_path / "a.jpg", "JPEG")

    prepared = load(tmp_path / "a.jpg")

    _, decoded = decode_data_url(prepared.url)
    assert decoded == data
    assert prepared.sha256 == hashlib.sha256(data).hexdigest()


def test_remote_url_passes_through_untouched():
    url = "https://example.com/cat.jpg?size=large"
    row = ManifestRow(line=1, id="x", image=url, source=url)

    assert asyncio.run(load_image(row)) == PreparedImage(url=url)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"

    with pytest.raises(ImageMissingError) as excinfo:
        load(path)

    assert str(excinfo.value) == f"image file not found: {path}"
    assert excinfo.value.error_type == "image_missing"


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")

    with pytest.raises(ImageEmptyError, match="empty") as excinfo:
        load(tmp_path / "empty.png")

    assert str(tmp_path / "empty.png") in str(excinfo.value)


def test_directory(tmp_path):
    (tmp_path / "photos.jpg").mkdir()

    with pytest.raises(ImageUnreadableError, match="directory") as excinfo:
        load(tmp_path / "photos.jpg")

    assert str(tmp_path / "photos.jpg") in str(excinfo.value)


def test_text_file_is_not_an_image_and_says_it_is_text(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("<!DOCTYPE html>\n<html>Access denied</html>\n")

    with pytest.raises(NotAnImageError) as excinfo:
        load(path)

    message = str(excinfo.value)
    assert message.startswith(f"{path} is not an image (its content is text starting '<!DOCTYPE html>'")
    assert "not JPEG/PNG/GIF/WebP/BMP/TIFF" in message
    assert excinfo.value.error_type == "not_an_image"


def test_binary_non_image_shows_its_first_bytes(tmp_path):
    path = tmp_path / "archive.png"
    path.write_bytes(b"PK\x03\x04\x14\x00\x00\x00" + bytes(range(256)))

    with pytest.raises(NotAnImageError, match="starts with bytes 50 4b 03 04 14 00 00 00"):
        load(path)


@pytest.mark.parametrize(
    "head, name",
    [
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage!" * 8, "PNG"),
        (b"\xff\xd8\xff" + b"garbage!" * 8, "JPEG"),
        (b"GIF89a\x00", "GIF"),
    ],
)
def test_known_magic_with_a_garbled_header_is_unreadable(tmp_path, head, name):
    path = tmp_path / "bad.img"
    path.write_bytes(head)

    with pytest.raises(ImageUnreadableError, match=f": corrupt or truncated {name}: ") as excinfo:
        load(path)

    assert str(path) in str(excinfo.value)
    assert "BytesIO" not in str(excinfo.value)


def test_real_png_cut_inside_its_header_is_unreadable(tmp_path):
    data = write_image(tmp_path / "whole.png", "PNG")
    (tmp_path / "cut.png").write_bytes(data[:20])

    with pytest.raises(ImageUnreadableError, match="corrupt or truncated PNG"):
        load(tmp_path / "cut.png")


def test_a_small_file_is_prepared_in_place_and_a_large_one_in_one_worker_thread_call(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", "PNG")
    calls = []
    real_to_thread = asyncio.to_thread

    async def counting_to_thread(func, /, *args, **kwargs):
        calls.append(func)
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(images.asyncio, "to_thread", counting_to_thread)
    row = ManifestRow(1, "a", "a.png", str(tmp_path / "a.png"))
    small = asyncio.run(images.ImageLoader().load(row))
    assert calls == []  # a few KB: the hop would cost more than the work
    large = asyncio.run(images.ImageLoader(inline_bytes=0).load(row))
    assert len(calls) == 1 and large == small  # the same image either way


@pytest.mark.parametrize(
    "head, expected",
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"\xff\xd8\xff\xdb", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        (b"GIF87a\x01\x00", "image/gif"),
        (b"GIF89a\x01\x00", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"BM\x36\x00\x00\x00", "image/bmp"),
        (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "image/tiff"),
        (b"", None),
        (b"\xff\xd8", None),  # too short for JPEG's three bytes
        (b"\x89PNG\r\n", None),
        (b"GIF88a", None),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
        (b"II+\x00", None),  # BigTIFF is not on the list
        (b"%PDF-1.7", None),
        (b"hello, world", None),
    ],
)
def test_sniff_mime(head, expected):
    assert sniff_mime(head) == expected


def test_every_sample_file_loads_except_the_deliberately_broken_one():
    with open(SAMPLE_DATA / "manifest.csv", newline="") as f:
        manifest = list(csv.DictReader(f))
    on_disk = {p.name for p in SAMPLE_DATA.iterdir()} - {"manifest.csv", "README.md"}
    assert {r["image"] for r in manifest} == on_disk

    for entry in manifest:
        path = SAMPLE_DATA / entry["image"]
        if entry["image"] == "broken.jpg":
            with pytest.raises(NotAnImageError, match="its content is text"):
                load(path)
            continue
        prepared = load(path)
        expected = "image/png" if path.suffix == ".png" else "image/jpeg"
        assert prepared.mime == expected, path
        assert prepared.num_bytes == path.stat().st_size
