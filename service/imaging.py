"""Decoding of uploaded images and encoding of the explanation pictures."""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# Pillow format names. MPO is the multi-picture JPEG that many cameras write.
SUPPORTED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP"})

# Modes decoded to one gray channel. Every other mode becomes RGB.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

# Weight of the heatmap colours in the overlay, so the image keeps 1 - OVERLAY_ALPHA.
OVERLAY_ALPHA = 0.45
# Mask outline colour in the overlay, RGB.
OUTLINE_RGB = (255, 255, 255)


class InvalidImageError(ValueError):
    """The upload is not an image in a supported format, or it is corrupt."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than the configured limit."""


@dataclass(frozen=True)
class DecodedImage:
    """An upload ready for the model.

    Attributes:
        tensor: `(channels, height, width)`, 1 or 3 channels, `torch.uint8` for
            8-bit images and `torch.float32` in `[0, 1]` for deeper ones.
        preview: `(height, width, 3)` uint8 RGB copy used to draw the overlay.
        format: Pillow's name of the file format, for example `PNG`.
    """

    tensor: torch.Tensor
    preview: np.ndarray
    format: str

    @property
    def width(self) -> int:
        """Width in pixels after the EXIF orientation is applied."""
        return int(self.tensor.shape[2])

    @property
    def height(self) -> int:
        """Height in pixels after the EXIF orientation is applied."""
        return int(self.tensor.shape[1])


def decode_image(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode an upload, apply its EXIF orientation and convert it for the model.

    The pixel count is checked from the header, before the pixel data is
    decoded, so a small file that expands to a huge image costs no memory.
    Multi-frame files (TIFF pages, animated WebP) contribute their first frame.
    Transparent pixels are composited onto black.

    Args:
        data: The uploaded file's bytes.
        max_pixels: Largest accepted width times height.

    Returns:
        The decoded image.

    Raises:
        InvalidImageError: The bytes are not a supported image, or the file is
            truncated or corrupt.
        ImageTooLargeError: Width times height exceeds `max_pixels`.
    """
    if not data:
        raise InvalidImageError("the uploaded file is empty")

    # Pillow's own bomb check uses a global limit. Ours is stricter and per
    # call, so Pillow's warning is only noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(f"the image has more than the limit of {max_pixels} pixels") from error
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise InvalidImageError("the uploaded file is not a supported image") from error

        if image.format not in SUPPORTED_FORMATS:
            raise InvalidImageError(
                f"image format {image.format} is not supported; use PNG, JPEG, BMP, TIFF or WebP"
            )
        image_format = image.format
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"the image has {width}x{height} pixels, more than the limit of {max_pixels} pixels"
            )
        if width == 0 or height == 0:
            raise InvalidImageError("the image has no pixels")

        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise InvalidImageError("the image data is truncated or corrupt") from error

    if image.mode in _GRAY_MODES:
        tensor = _gray_tensor(image)
    else:
        tensor = _rgb_tensor(image)
    return DecodedImage(tensor=tensor, preview=_preview(tensor), format=image_format)


def _gray_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode in ("LA", "La"):
        image = _composite_on_black(image).convert("L")
    if image.mode in _HIGH_DEPTH_MODES:
        # 16-bit gray arrives as an integer mode, and the full 16-bit range maps to [0, 1].
        values = np.asarray(image, dtype=np.float32) / 65535.0
        return torch.from_numpy(np.clip(values, 0.0, 1.0)[None].copy())
    if image.mode == "F":
        # NOTE: floating-point TIFFs have no fixed range. Values are assumed to lie in [0, 1] and clipped.
        values = np.asarray(image, dtype=np.float32)
        return torch.from_numpy(np.clip(values, 0.0, 1.0)[None].copy())
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    return torch.from_numpy(gray[None].copy())


def _rgb_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa", "PA"):
        image = _composite_on_black(image)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def _composite_on_black(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _preview(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.uint8:
        pixels = tensor.numpy()
    else:
        pixels = (tensor.numpy() * 255.0 + 0.5).astype(np.uint8)
    pixels = pixels.transpose(1, 2, 0)  # (H, W, C)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels)


def heatmap_to_rgb(heatmap: np.ndarray) -> np.ndarray:
    """Colour a heatmap with the JET colour map.

    The heatmap contains the Gaussian-filtered normalised error, which lies in
    `[0, 1]`, so it is scaled by a fixed 255 and not by its own maximum: the
    same colour means the same error in every image, and an all-zero heatmap
    is plain blue.

    Args:
        heatmap: `(height, width)` float array, values in `[0, 1]`.

    Returns:
        `(height, width, 3)` uint8 RGB array.
    """
    scaled = np.clip(heatmap, 0.0, 1.0) * 255.0 + 0.5
    bgr = cv2.applyColorMap(scaled.astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay_to_rgb(preview: np.ndarray, heatmap: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend the coloured heatmap on the image and draw the mask outline.

    Args:
        preview: `(height, width, 3)` uint8 RGB image.
        heatmap: `(height, width)` float array, values in `[0, 1]`.
        mask: `(height, width)` bool array.

    Returns:
        `(height, width, 3)` uint8 RGB array.
    """
    colours = heatmap_to_rgb(heatmap)
    blended = cv2.addWeighted(preview, 1.0 - OVERLAY_ALPHA, colours, OVERLAY_ALPHA, 0.0)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    # A line width of about 0.4 % of the shorter side stays visible on large images.
    thickness = max(1, round(min(mask.shape) / 250))
    cv2.drawContours(blended, contours, -1, OUTLINE_RGB, thickness)
    return blended


def mask_to_gray(mask: np.ndarray) -> np.ndarray:
    """Convert a bool mask to a uint8 picture, 255 where the mask is set."""
    return mask.astype(np.uint8) * 255


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode a `(height, width)` gray or `(height, width, 3)` RGB uint8 array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
