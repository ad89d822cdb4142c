"""Image files to arrays, as the image-folder source and prediction read them."""
from __future__ import annotations

import io

import numpy as np

from ray_al.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
GRAY_MODES = ("1", "L", "LA", "I", "I;16")  # decoded as one channel; everything else as RGB


def cell_bytes(cell) -> bytes:
    """A Parquet image cell's encoded bytes: Hugging Face exports write {bytes, path}; raw bytes pass."""
    return cell["bytes"] if isinstance(cell, dict) else cell


def decode_image(raw: bytes, channels: int, size: tuple[int, int] | None = None, resize: bool = False,
                 name: str = "image") -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 [C, H, W]: grey or RGB as the model takes, resized when the run
    resized its images, otherwise checked against (H, W)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise DataError(f"{name}: empty")
    try:
        img = Image.open(io.BytesIO(raw))
        img = wide_grey_to_8_bits(img)
        img = img.convert("L" if channels == 1 else "RGB")
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image (no PNG, JPEG or other format Pillow reads)") from None
    except Image.DecompressionBombError as e:  # not an OSError: it was a traceback (and a 500 over HTTP)
        raise DataError(f"{name}: {str(e).splitlines()[0]}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{name}: not a readable image ({str(e).splitlines()[0]})") from None
    if size is not None and (img.height, img.width) != tuple(size):
        if not resize:
            raise DataError(f"{name}: image is {img.height}x{img.width}, expected {size[0]}x{size[1]} "
                            f"(set data.image_size to resize)")
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def wide_grey_to_8_bits(img):
    """A grey image of more than 8 bits (I;16*, or I, as Pillow opens 16-bit PNGs and 32-bit TIFFs) scaled
    to 8 bits by its depth: convert("L") clips every value above 255 instead of scaling."""
    from PIL import Image

    if not (img.mode == "I" or img.mode.startswith("I;16")):
        return img
    arr = np.asarray(img).astype(np.float64)
    bits = 16 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else 32
    scaled = np.clip(np.round(arr * (255 / (2 ** bits - 1))), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L")
