import os
import struct
import time
import zlib
from io import BytesIO

import pytest
from PIL import Image, ImageFile

from pipeline.errors import ImageUnreadableError
from pipeline.errors import ImageTooLargeError
from pipeline.imageprep import PreparedBytes, base64_len, prepare_image


def encode(img: Image.Image, pillow_format: str, **params) -> bytes:
    buf = BytesIO()
    img.save(buf, pillow_format, **params)
    return buf.getvalue()


def noise(size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))


def opened(result: PreparedBytes) -> Image.Image:
    img = Image.open(BytesIO(result.data))
    assert Image.MIME[img.format] == result.mime
    assert img.size == (result.width, result.height)
    return img


def close_to(pixel, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected))


def png_claiming(width: int, height: int) -> bytes:
    """A real 1×1 PNG whose header says width×height: what a decompression bomb looks like."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))
    return bytes(data)


@pytest.fixture(scope="module")
def big_noisy_jpeg() -> bytes:
    return encode(noise((4000, 3000)), "JPEG", quality=90)


@pytest.mark.parametrize(
    "img, pillow_format, mime",
    [
        (Image.new("RGB", (800, 600), (10, 120, 200)), "JPEG", "image/jpeg"),
        (Image.new("L", (300, 200), 90), "JPEG", "image/jpeg"),
        (Image.new("RGBA", (1568, 20), (10, 120, 200, 100)), "PNG", "image/png"),
        (Image.new("P", (64, 64), 3), "PNG", "image/png"),
        (Image.new("RGB", (64, 48), (1, 2, 3)), "WEBP", "image/webp"),
        (Image.new("P", (64, 48), 1), "GIF", "image/gif"),
    ],
)
def test_acceptable_image_passes_unchanged_without_decoding(monkeypatch, img, pillow_format, mime):
    data = encode(img, pillow_format)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    result = prepare_image(data, mime)
    assert result == PreparedBytes(data, mime, *img.size, *img.size, changed=False)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    result = prepare_image(encode(img, "JPEG", exif=exif), "image/jpeg")
    assert result.changed
    assert (result.width, result.height) == (20, 40)
    assert (result.original_width, result.original_height) == (40, 20)
    assert opened(result).getexif().get(0x0112, 1) == 1


@pytest.mark.parametrize(
    "img, pillow_format, mime, expected_mime",
    [
        (Image.new("RGB", (30, 20), (0, 200, 0)), "BMP", "image/bmp", "image/jpeg"),
        (Image.new("RGB", (30, 20), (0, 200, 0)), "TIFF", "image/tiff", "image/jpeg"),
        (Image.new("RGBA", (30, 20), (0, 200, 0, 128)), "TIFF", "image/tiff", "image/png"),
    ],
)
def test_formats_providers_refuse_are_converted(img, pillow_format, mime, expected_mime):
    result = prepare_image(encode(img, pillow_format), mime)
    assert result.changed and result.mime == expected_mime
    out = opened(result)
    assert out.size == (30, 20)
    assert close_to(out.getpixel((15, 10)), img.getpixel((15, 10)))


def test_16_bit_grey_png_is_scaled_to_8_bits():
    img = Image.frombytes("I;16", (32, 32), (b"\xff\xff" * 16 + b"\x00\x80" * 16) * 32)  # 65535 | 32768
    data = encode(img, "PNG")
    assert Image.open(BytesIO(data)).mode == "I;16"
    result = prepare_image(data, "image/png")
    grey = opened(result).convert("L")
    assert result.changed and result.mime == "image/jpeg"
    assert close_to([grey.getpixel((4, 16)), grey.getpixel((28, 16))], [255, 128])


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red
    result = prepare_image(encode(img, "JPEG"), "image/jpeg")
    out = opened(result)
    assert result.changed and result.mime == "image/jpeg" and out.mode == "RGB"
    assert close_to(out.getpixel((16, 16)), (255, 0, 0))


def test_palette_png_with_transparency_becomes_rgba_png():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 255, 255, 200, 0, 0])
    img.paste(1, (10, 0, 20, 20))
    result = prepare_image(encode(img, "PNG", transparency=0), "image/png")
    out = opened(result)
    assert result.changed and result.mime == "image/png" and out.mode == "RGBA"
    assert out.getpixel((2, 2))[3] == 0
    assert out.getpixel((15, 2)) == (200, 0, 0, 255)


@pytest.mark.parametrize(
    "pillow_format, mime", [("GIF", "image/gif"), ("PNG", "image/png"), ("WEBP", "image/webp")]
)
def test_animation_becomes_its_first_frame(pillow_format, mime):
    red, green, blue = (Image.new("RGB", (40, 30), colour) for colour in ("red", "green", "blue"))
    data = encode(red, pillow_format, save_all=True, append_images=[green, blue], duration=100, loop=0)
    assert Image.open(BytesIO(data)).n_frames == 3
    result = prepare_image(data, mime)
    out = opened(result)
    assert result.changed and result.mime == "image/jpeg" and out.size == (40, 30)
    assert close_to(out.getpixel((20, 15)), (255, 0, 0))


def test_rgba_png_over_max_side_is_downscaled_as_png():
    img = Image.new("RGBA", (3000, 1000), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (0, 0, 1500, 1000))
    result = prepare_image(encode(img, "PNG"), "image/png")
    out = opened(result)
    assert result.changed and result.mime == "image/png" and out.mode == "RGBA"
    assert out.size == (1568, 523)
    assert out.getpixel((10, 10))[3] == 0 and out.getpixel((1500, 10)) == (0, 0, 255, 255)


def test_big_jpeg_is_downscaled_to_max_side(big_noisy_jpeg):
    result = prepare_image(big_noisy_jpeg, "image/jpeg")
    assert result.changed and result.mime == "image/jpeg"
    assert (result.width, result.height) == (1568, 1176)
    assert (result.original_width, result.original_height) == (4000, 3000)
    assert opened(result).mode == "RGB"


def test_small_max_bytes_steps_quality_then_size_down(big_noisy_jpeg):
    at_quality_90 = prepare_image(big_noisy_jpeg, "image/jpeg", max_side=800)
    assert at_quality_90.width == 800
    just_under = base64_len(len(at_quality_90.data)) - 1
    by_quality = prepare_image(big_noisy_jpeg, "image/jpeg", max_side=800, max_bytes=just_under)
    assert by_quality.width == 800 and len(by_quality.data) < len(at_quality_90.data)
    by_size = prepare_image(big_noisy_jpeg, "image/jpeg", max_bytes=100_000)
    assert base64_len(len(by_size.data)) <= 100_000
    assert by_size.width < 1568 and abs(by_size.width / by_size.height - 4 / 3) < 0.01


def test_small_max_bytes_shrinks_png_with_alpha():
    img = noise((600, 400)).convert("RGBA")
    img.putalpha(128)
    result = prepare_image(encode(img, "PNG"), "image/png", max_bytes=200_000)
    assert result.mime == "image/png" and base64_len(len(result.data)) <= 200_000
    assert result.width < 600


def test_impossible_max_bytes_is_a_clear_error():
    with pytest.raises(ImageTooLargeError, match="does not fit in 10 bytes of base64"):
        prepare_image(encode(Image.new("RGB", (2000, 100)), "BMP"), "image/bmp", max_bytes=10)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
# 50000²: beyond Pillow's own hard limit; 10000²: between Pillow's warning and that limit.
@pytest.mark.parametrize("side", [50_000, 10_000])
def test_decompression_bomb_is_refused_from_the_header(side):
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="resize it before captioning"):
        prepare_image(png_claiming(side, side), "image/png")
    assert time.perf_counter() - started < 1


def test_max_pixels_is_checked_before_decoding():
    data = encode(Image.new("RGB", (3000, 2000)), "PNG")
    with pytest.raises(ImageTooLargeError) as info:
        prepare_image(data, "image/png", max_pixels=5_000_000)
    assert str(info.value) == (
        "image is 3000×2000 (6 megapixels), more than the 5 megapixel limit; resize it before captioning"
    )
    assert info.value.error_type == "image_too_large"


def test_truncated_jpeg_is_unreadable(big_noisy_jpeg):
    with pytest.raises(ImageUnreadableError, match="truncated"):
        prepare_image(big_noisy_jpeg[: len(big_noisy_jpeg) // 2], "image/jpeg")
