"""Image decoding for the model: any upload Pillow reads, to uint8 RGB pixels at the model's size.

Web servers run this before queueing; workers only ever see pixels (serving/messages.py).
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
from gevent import monkey
from PIL import Image, ImageOps, UnidentifiedImageError, features

CROP_FRACTION = 0.875  # the centre crop keeps 224 of 256: the standard ImageNet evaluation
# The formats accepted, checked by Pillow before anything is decoded (its JPEG reader also takes
# the MPO files many cameras write). Anything else (ICO, PSD, DDS, ...) is refused unread.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF") + (
    ("AVIF",) if features.check("avif") else ()
)
# Modes Image.reduce takes; the others are converted first (palette indices cannot be averaged).
REDUCIBLE_MODES = frozenset({"L", "LA", "La", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "F"})
_native_lock = monkey.get_original("_thread", "allocate_lock")  # never a patched one
REDUCING_GAP = 2  # a decoded image is box-reduced to no less than twice the side the model needs


class ImageError(ValueError):
    """The upload cannot be turned into model input; the message is safe to show the client."""


class DecodeBusy(Exception):
    """No memory for this decode right now: other large images are being decoded (503)."""


class MemoryBudget:
    """Bytes of decoded pixels this process may hold at once, shared by the threads that decode:
    a burst of large images waits its turn instead of taking the host's memory.

    Built on the interpreter's own locks, whatever gevent has patched: under gevent the decodes
    run on native threads (serving/web/cpu_threads.py), and a patched ``threading.Condition``
    contended across OS threads can miss its wake-up and hang a decode for ever. A wait here
    blocks its OS thread, so only those threads (or unpatched request threads) reserve."""

    def __init__(
        self,
        max_bytes: int,
        wait_seconds: float = 5.0,
        release: Callable[[], None] | None = None,
        release_above: int = 32 * 2**20,
    ):
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._lock = _native_lock()
        self._waiters: list[Any] = []  # a held native lock per waiting reservation
        # Called after a reservation of more than release_above bytes ends: hand memory back.
        self._release, self._release_above = release, release_above

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        if nbytes > self.max_bytes:
            raise ImageError(
                f"Decoding this image would take {nbytes // 2**20} MB, more than this server's "
                f"decode budget of {self.max_bytes // 2**20} MB."
            )
        if not self._take(nbytes):
            raise DecodeBusy("The server is busy decoding other large images. Try again shortly.")
        try:
            yield
        finally:
            self._give_back(nbytes)
            if self._release and nbytes > self._release_above:
                self._release()

    def _take(self, nbytes: int) -> bool:
        give_up = time.monotonic() + self.wait_seconds
        while True:
            with self._lock:
                if self.in_use + nbytes <= self.max_bytes:
                    self.in_use += nbytes
                    return True
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return False
                waiter = _native_lock()
                waiter.acquire()
                self._waiters.append(waiter)
            waiter.acquire(timeout=remaining)  # released by the next give-back: look again
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.in_use -= nbytes
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.release()


def _decoded_bytes(image: Image.Image) -> int:
    """Memory a decode takes: Pillow keeps 1 byte per pixel for 1, L and P, 2 for 16-bit grey,
    4 for every other mode (RGB too); modes that cannot be reduced are converted, a second copy."""
    pixels = image.size[0] * image.size[1]
    stored = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return pixels * (stored + (0 if image.mode in REDUCIBLE_MODES else 4))


def _reduced(image: Image.Image, min_side: int) -> Image.Image:
    """A decoded image box-reduced by a whole factor, keeping at least REDUCING_GAP x min_side on
    its shorter side: later conversions and the final resize then work on a small copy."""
    factor = min(image.size) // (REDUCING_GAP * min_side) if min_side else 1
    if factor < 2:
        return image
    if image.mode not in REDUCIBLE_MODES:
        image = image.convert(
            "I"
            if image.mode.startswith("I;16")
            else "RGBA"
            if _has_alpha(image)
            else "L"
            if image.mode == "1"
            else "RGB"
        )
    return image.reduce(factor)


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


def open_image(
    data: bytes, max_pixels: int, min_side: int = 0, budget: MemoryBudget | None = None
) -> Image.Image:
    """Decode an upload (first frame, EXIF orientation applied), refusing decompression bombs
    and formats not in ACCEPTED_FORMATS before anything is decoded.

    With ``min_side``, a JPEG at least twice that size is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling), keeping both sides >= min_side, and any other image is box-reduced
    right after decoding. With a ``budget``, the decode first reserves the memory it takes.
    """
    if not data:
        raise ImageError("The uploaded file is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            image: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"The image is {width}x{height} pixels; the limit is {max_pixels} pixels.")
        if min_side and image.format in ("JPEG", "MPO"):
            image.draft(None, (min_side, min_side))  # square: the same after EXIF rotation
        with budget.reserve(_decoded_bytes(image)) if budget else nullcontext():
            image.load()
            image = _reduced(image, min_side)
        ImageOps.exif_transpose(image, in_place=True)  # no copy of the decoded pixels
        return image
    except (ImageError, DecodeBusy):
        raise
    except Image.DecompressionBombError:  # Pillow's own hard cap, above any limit settings.py allows
        raise ImageError(f"The image has more pixels than the limit of {max_pixels}.") from None
    except UnidentifiedImageError:
        raise ImageError(
            f"The uploaded file is not an image this server reads ({', '.join(ACCEPTED_FORMATS)})."
        ) from None
    except Exception as exc:  # a malformed file can make a decoder raise anything at all
        raise ImageError(f"The image could not be decoded ({type(exc).__name__}: {exc}).") from None


def header_pixels(data: bytes) -> int | None:
    """The pixels an upload's header declares, read without decoding, for an upload whose decode
    costs about what its pixels say; None: unreadable, or a progressive JPEG (its decode costs
    one pass per scan, and a small file can hold thousands of scans)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as image:
                width, height = image.size
                if image.info.get("progressive") or image.info.get("progression"):
                    return None
        return width * height
    except Exception:  # whatever a malformed file makes the header parser raise: decode decides
        return None


def decode_image(
    data: bytes, max_pixels: int, min_side: int = 0, budget: MemoryBudget | None = None
) -> Image.Image:
    """An upload as an RGB image (see ``open_image``)."""
    image = open_image(data, max_pixels, min_side, budget)
    try:
        return to_rgb(image)
    except Exception as exc:
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


def prepare_image(
    data: bytes,
    size: tuple[int, int],
    max_pixels: int,
    resize: str = "squash",
    budget: MemoryBudget | None = None,
) -> np.ndarray:
    """Upload bytes to the uint8 pixels a model of input ``size`` takes."""
    image = decode_image(data, max_pixels, decoded_side(size, resize), budget)
    return fit_image(image, size, resize)


def warm_up_decoding() -> None:
    """Decode and fit a tiny image of every accepted format, mode and path once, in the calling
    thread. Under gevent the web tier decodes on native threads (serving/web/cpu_threads.py);
    Pillow and numpy import parts of themselves on first use, and a module's import lock
    created after monkey-patching is a gevent lock: a first import raced between a decode
    thread and the event loop could stall both (the likely cause of a fresh server's first
    requests stalling on a loaded machine). Called where the app is made, so every such import
    has happened before the first request."""
    samples = []
    for fmt in ACCEPTED_FORMATS:
        for mode in ("RGB", "L", "P", "RGBA"):
            image = Image.new(mode, (48, 40))
            if fmt == "JPEG" and mode in ("P", "RGBA"):
                continue
            buffer = io.BytesIO()
            extra: dict[str, object] = {}
            if fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
                exif = Image.Exif()
                exif[0x0112] = 6  # rotated: the EXIF transpose path too
                extra["exif"] = exif
            try:
                image.save(buffer, format=fmt, **extra)
            except (OSError, ValueError, KeyError):
                continue  # a mode this format cannot store
            samples.append(buffer.getvalue())
    for data in samples:
        for min_side in (0, 8):
            decoded = decode_image(data, 10_000, min_side)
            fit_image(decoded, (16, 12), "crop")
            fit_image(decoded, (16, 12), "squash")
