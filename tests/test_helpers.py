import io

import numpy as np
import pytest
from PIL import Image

from helpers import ImageError, prepare_image

SIZE = (32, 24)  # (width, height)


def _encoded(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def _prepared(data: bytes) -> np.ndarray:
    pixels = prepare_image(data, SIZE, max_pixels=10_000_000)
    assert pixels.shape == (SIZE[1], SIZE[0], 3) and pixels.dtype == np.uint8
    return pixels


RED = (200, 20, 20)


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "CMYK", "RGBA", "LA", "I", "I;16", "F", "1"])
def test_every_mode_becomes_rgb(mode):
    source = Image.new("RGB", (40, 30), RED)
    if mode in ("I", "I;16"):
        image = Image.fromarray(np.full((30, 40), 50000, dtype=np.uint16))  # 16-bit grey
        expected = np.array([round(50000 / 257)] * 3)
        data = _encoded(image, "PNG" if mode == "I;16" else "TIFF")
    elif mode == "F":
        data = _encoded(Image.fromarray(np.full((30, 40), 99.0, dtype=np.float32)), "TIFF")
        expected = np.array([99, 99, 99])
    else:
        image = source.convert(mode)
        data = _encoded(image, "TIFF" if mode == "CMYK" else "PNG")
        expected = np.asarray(image.convert("RGB")).mean(axis=(0, 1))  # P and 1 are dithered
    pixels = _prepared(data)
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), expected, atol=3)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    np.testing.assert_array_equal(_prepared(_encoded(image))[3, 3], [255, 255, 255])


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (20, 20), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    pixels = _prepared(buffer.getvalue())
    assert pixels[5, 5, 0] > 200 and pixels[5, 5, 2] < 50


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    pixels = prepare_image(_encoded(image, "JPEG", exif=exif, quality=95), (20, 40), 10_000_000)
    assert pixels.shape == (40, 20, 3)
    assert pixels[5, 10, 0] > 200  # the red half is now on top
    assert pixels[35, 10, 2] > 200


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is plain text, not a picture", "not an image"),
    ],
)
def test_unreadable_uploads_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        prepare_image(data, SIZE, 10_000_000)


def test_truncated_image_is_refused():
    data = _encoded(Image.effect_noise((200, 200), 50).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="could not be decoded"):
        prepare_image(data[: len(data) // 2], SIZE, 10_000_000)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _encoded(Image.new("1", (20_000, 20_000)))  # a few KB on disk, 400 MP decoded
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="pixels"):
        prepare_image(bomb, SIZE, max_pixels=40_000_000)
    medium = _encoded(Image.new("1", (3000, 2000)))
    with pytest.raises(ImageError, match="3000x2000 pixels; the limit is 1000000"):
        prepare_image(medium, SIZE, max_pixels=1_000_000)
