"""Decoding of uploads and encoding of the pictures."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from service import imaging
from service.imaging import ImageTooLargeError, InvalidImageError, decode_image

from service_testing import decode_png, encode, gray_image

LIMIT = 4096 * 4096


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` but whose data is a few bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("image_format", "mode", "channels"),
    [
        ("PNG", "L", 1),
        ("PNG", "RGB", 3),
        ("PNG", "RGBA", 3),
        ("PNG", "P", 3),
        ("PNG", "LA", 1),
        ("PNG", "1", 1),
        ("JPEG", "L", 1),
        ("JPEG", "RGB", 3),
        ("BMP", "RGB", 3),
        ("BMP", "L", 1),
        ("TIFF", "RGB", 3),
        ("TIFF", "L", 1),
        ("WEBP", "RGB", 3),
        ("WEBP", "RGBA", 3),
    ],
)
def test_decode_formats_and_modes(image_format: str, mode: str, channels: int) -> None:
    image = Image.fromarray(np.full((30, 40, 3), 128, dtype=np.uint8)).convert(mode)
    decoded = decode_image(encode(image, image_format), max_pixels=LIMIT)
    assert decoded.format == image_format
    assert decoded.tensor.shape == (channels, 30, 40)
    assert decoded.tensor.dtype == torch.uint8
    assert decoded.preview.shape == (30, 40, 3)
    assert (decoded.width, decoded.height) == (40, 30)


def test_decode_16_bit_png_scales_to_unit_range() -> None:
    pixels = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    data = encode(Image.fromarray(pixels), "PNG")
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.tensor.dtype == torch.float32
    assert decoded.tensor.shape == (1, 2, 2)
    assert decoded.tensor[0, 0, 1].item() == pytest.approx(1.0)
    assert decoded.tensor[0, 1, 0].item() == pytest.approx(32768 / 65535)
    assert decoded.tensor.min().item() == 0.0


def test_decode_rgba_composites_on_black() -> None:
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[..., :3] = 200
    pixels[0, 0, 3] = 255  # one opaque pixel, the rest transparent
    decoded = decode_image(encode(Image.fromarray(pixels, mode="RGBA"), "PNG"), max_pixels=LIMIT)
    assert decoded.tensor[:, 0, 0].tolist() == [200, 200, 200]
    assert decoded.tensor[:, 1, 1].tolist() == [0, 0, 0]


def test_decode_applies_exif_orientation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(gray_image(width=80, height=60), "JPEG", exif=exif)
    decoded = decode_image(data, max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (60, 80)


def test_decode_rejects_text() -> None:
    with pytest.raises(InvalidImageError, match="not a supported image"):
        decode_image(b"this is not an image", max_pixels=LIMIT)


def test_decode_rejects_empty_file() -> None:
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"", max_pixels=LIMIT)


def test_decode_rejects_truncated_png() -> None:
    data = encode(gray_image(), "PNG")
    with pytest.raises(InvalidImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2], max_pixels=LIMIT)


def test_decode_rejects_unsupported_format() -> None:
    with pytest.raises(InvalidImageError, match="GIF is not supported"):
        decode_image(encode(gray_image(), "GIF"), max_pixels=LIMIT)


def test_decode_checks_pixels_before_decoding() -> None:
    # 100 000 x 100 000 pixels in a 100-byte file: only the header is read.
    data = png_header_only(100_000, 100_000)
    with pytest.raises(ImageTooLargeError, match="more than the limit of 16777216 pixels"):
        decode_image(data, max_pixels=LIMIT)


def test_decode_pixel_limit_is_inclusive() -> None:
    data = encode(gray_image(width=10, height=10), "PNG")
    assert decode_image(data, max_pixels=100).width == 10
    with pytest.raises(ImageTooLargeError, match="10x10 pixels, more than the limit of 99"):
        decode_image(data, max_pixels=99)


def test_heatmap_colours_fixed_range() -> None:
    zeros = imaging.heatmap_to_rgb(np.zeros((4, 5), dtype=np.float32))
    ones = imaging.heatmap_to_rgb(np.ones((4, 5), dtype=np.float32))
    assert zeros.shape == (4, 5, 3)
    assert zeros.dtype == np.uint8
    # JET runs from dark blue at 0 to dark red at 1.
    assert zeros[0, 0, 2] > zeros[0, 0, 0]
    assert ones[0, 0, 0] > ones[0, 0, 2]


def test_overlay_draws_mask_outline() -> None:
    preview = np.zeros((40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    overlay = imaging.overlay_to_rgb(preview, np.zeros((40, 40), dtype=np.float32), mask)
    assert overlay.shape == (40, 40, 3)
    assert tuple(overlay[10, 20]) == imaging.OUTLINE_RGB
    assert tuple(overlay[20, 20]) != imaging.OUTLINE_RGB


def test_encode_png_round_trip() -> None:
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    decoded = decode_png(imaging.encode_png(pixels))
    assert np.array_equal(np.asarray(decoded), pixels)


def test_preview_of_16_bit_image_is_8_bit() -> None:
    data = encode(Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)), "PNG")
    decoded = decode_image(data, max_pixels=LIMIT)
    assert decoded.preview.dtype == np.uint8
    assert decoded.preview.max() == 255


def test_decode_uses_first_tiff_page() -> None:
    pages = [gray_image(width=20, height=10), gray_image(width=30, height=15)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    decoded = decode_image(buffer.getvalue(), max_pixels=LIMIT)
    assert (decoded.width, decoded.height) == (20, 10)
