"""Image decoding for the model: any upload Pillow reads, to uint8 RGB pixels at the model's size.

Web servers run this before queueing; workers only ever see pixels (serving/messages.py).
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESIZE_MODES = ("crop", "squash")
CROP_FRACTION = 0.875  # the centre crop keeps 224 of 256: the standard ImageNet evaluation


class ImageError(ValueError):
    """The upload cannot be turned into model input; the message is safe to show the client."""


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (PNG, TIFF) to 8-bit 'L' by keeping the high byte."""
    pixels = np.asarray(image)
    if image.mode == "F":
        pixels = np.clip(pixels, 0, 255)
    else:
        pixels = np.clip(pixels, 0, 65535) / 257.0
    return Image.fromarray(pixels.round().astype(np.uint8), mode="L")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB; transparent areas become white, as a viewer shows them."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """Decode an upload (first frame, EXIF orientation applied), refusing decompression bombs.

    With ``min_side``, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), keeping both sides >= min_side: a 1600x1200 photo for a 224 model
    decodes ~10x faster than at full size.
    """
    if not data:
        raise ImageError("The uploaded file is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels.")
            image.seek(0)
            if min_side and image.format == "JPEG":
                image.draft(None, (min_side, min_side))  # square: the same after EXIF rotation
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # no copy of the decoded pixels
            return image
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own guard trips while reading the header of truly huge images
        raise ImageError(f"The image has more pixels than the limit of {max_pixels}.") from None
    except UnidentifiedImageError:
        raise ImageError("The uploaded file is not an image this server can read.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"The image could not be decoded ({exc}).") from None


def decode_image(data: bytes, max_pixels: int, min_side: int = 0) -> Image.Image:
    """An upload as an RGB image (see ``open_image`` for ``min_side``)."""
    image = open_image(data, max_pixels, min_side)
    try:
        return to_rgb(image)
    except (OSError, ValueError) as exc:
        raise ImageError(f"Images in mode {image.mode} are not supported ({exc}).") from None


def decoded_side(size: tuple[int, int], resize: str) -> int:
    """The shorter side a decoded image needs for a model of input ``size`` not to be upsampled."""
    return math.ceil(max(size) / CROP_FRACTION) if resize == "crop" else max(size)


def centre_crop_box(source: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The region of ``source`` that "resize the shorter side to size / 0.875, then centre-crop
    ``size``" keeps, in source pixels: how ImageNet models are evaluated."""
    width, height = source
    scale = max(size[0] / CROP_FRACTION / width, size[1] / CROP_FRACTION / height)
    half_width, half_height = size[0] / scale / 2, size[1] / scale / 2
    return (
        width / 2 - half_width,
        height / 2 - half_height,
        width / 2 + half_width,
        height / 2 + half_height,
    )


def fit_image(image: Image.Image, size: tuple[int, int], resize: str = "squash") -> np.ndarray:
    """An RGB image as uint8 pixels of shape (height, width, 3) for a model of input ``size``
    ((width, height), as Pillow counts), bilinear: ``squash`` stretches the whole image to ``size``
    (how Keras's image_dataset_from_directory trains); ``crop`` keeps the centre, as ImageNet
    models were evaluated. Either way one resampling pass, with no intermediate image."""
    if resize == "crop":
        image = image.resize(size, Image.Resampling.BILINEAR, box=centre_crop_box(image.size, size))
    elif image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def prepare_image(data: bytes, size: tuple[int, int], max_pixels: int, resize: str = "squash") -> np.ndarray:
    """Upload bytes to the uint8 pixels a model of input ``size`` takes."""
    return fit_image(decode_image(data, max_pixels, min_side=decoded_side(size, resize)), size, resize)
