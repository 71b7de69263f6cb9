"""Image helpers: the door to serving/images.py (decoding within limits, crop or squash).

from helpers import prepare_image
pixels = prepare_image(open("shuttle.jpg", "rb").read(), (224, 224), 25_000_000, "crop")
"""

from serving.images import (
    ACCEPTED_FORMATS,
    CROP_FRACTION,
    DecodeBusy,
    ImageError,
    MemoryBudget,
    centre_crop_box,
    decode_image,
    decoded_side,
    fit_image,
    open_image,
    prepare_image,
    to_rgb,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "CROP_FRACTION",
    "DecodeBusy",
    "ImageError",
    "MemoryBudget",
    "centre_crop_box",
    "decode_image",
    "decoded_side",
    "fit_image",
    "open_image",
    "prepare_image",
    "to_rgb",
]
