import io
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from serving.images import ACCEPTED_FORMATS, DecodeBusy, ImageError, MemoryBudget, prepare_image

from .support import ROOT

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


def _ico_wrapping(png: bytes) -> bytes:
    """An .ico file whose one entry is a PNG (as Windows icons may be), whatever its size."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


def test_only_the_accepted_formats_are_read_and_others_are_refused_unread():
    huge = _encoded(Image.new("1", (8000, 8000)))  # 64 MP, a few KB as a PNG
    started = time.perf_counter()
    for data in (
        _ico_wrapping(huge),
        _encoded(Image.new("RGB", (8, 8)), "ICO"),
        _encoded(Image.new("RGB", (8, 8)), "DDS"),
        _encoded(Image.new("RGB", (8, 8)), "TGA"),
    ):
        with pytest.raises(ImageError, match=r"not an image this server reads \(JPEG, PNG"):
            prepare_image(data, SIZE, max_pixels=100_000_000)
    assert time.perf_counter() - started < 5  # nothing was decoded (a hang guard, not a benchmark)


@pytest.mark.parametrize(
    "fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"] + (["AVIF"] if "AVIF" in ACCEPTED_FORMATS else [])
)
def test_every_accepted_format_decodes(fmt):
    image = Image.new("RGB", (40, 30), RED)
    np.testing.assert_allclose(_prepared(_encoded(image, fmt)).mean(axis=(0, 1)), RED, atol=12)


def _raises(data: bytes) -> type | None:
    try:
        Image.open(io.BytesIO(data)).load()
    except Exception as exc:
        return type(exc)
    return None


@pytest.mark.skipif("AVIF" not in ACCEPTED_FORMATS, reason="this Pillow reads no AVIF")
def test_a_decoder_that_raises_anything_is_a_400():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encoded(Image.fromarray(noise), "AVIF")
    # One flipped byte makes Pillow's AVIF decoder raise RuntimeError, which is not an OSError.
    flipped = (data[:n] + bytes([data[n] ^ 0xFF]) + data[n + 1 :] for n in range(16, len(data)))
    broken = next((d for d in flipped if _raises(d) is RuntimeError), None)
    assert broken is not None, "no flipped byte made the AVIF decoder raise RuntimeError"
    with pytest.raises(ImageError, match="could not be decoded .RuntimeError"):
        prepare_image(broken, SIZE, max_pixels=10_000_000)


def test_a_large_png_is_reduced_right_after_decoding_and_keeps_its_colours():
    image = Image.new("P", (3000, 2000), 1)
    image.putpalette([0, 0, 0, 200, 20, 20] + [0] * 762)
    pixels = prepare_image(_encoded(image), (224, 224), max_pixels=10_000_000)
    assert pixels.shape == (224, 224, 3)
    np.testing.assert_allclose(pixels.mean(axis=(0, 1)), RED, atol=1)


def test_exif_orientation_survives_the_reduced_decode():
    image = Image.new("RGB", (4000, 2000), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 2000, 2000))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = prepare_image(_encoded(image, "JPEG", exif=exif, quality=90), (100, 200), 10_000_000)
    assert pixels[10, 50, 0] > 200 and pixels[190, 50, 2] > 200  # red on top once turned


def test_the_memory_budget_refuses_what_can_never_fit_and_makes_the_rest_wait():
    budget = MemoryBudget(max_bytes=30 * 2**20, wait_seconds=0.2)
    big = _encoded(Image.new("RGB", (3000, 3000)))  # 36 MB decoded
    with pytest.raises(ImageError, match="decode budget of 30 MB"):
        prepare_image(big, SIZE, max_pixels=100_000_000, budget=budget)
    fits = _encoded(Image.new("RGB", (2000, 2000)))  # 16 MB decoded
    with budget.reserve(20 * 2**20):  # another request holds most of the budget
        with pytest.raises(DecodeBusy):
            prepare_image(fits, SIZE, max_pixels=100_000_000, budget=budget)
    assert prepare_image(fits, SIZE, max_pixels=100_000_000, budget=budget).shape == (24, 32, 3)
    assert budget.in_use == 0


# gevent's patching is process-wide, so this runs in fresh processes. In each, 32 greenlets hand
# 3 x 1,280 decodes to 16 native threads (as serving/web/cpu_threads.py does) that contend for the
# budget's lock. Four such processes at once on a small machine: with a patched Condition about
# one in three hung (a lost wake-up only shows while threads are preempted mid-handoff).
BUDGET_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import gevent
from gevent.threadpool import ThreadPool
from serving.images import MemoryBudget
budget, pool = MemoryBudget(max_bytes=10**9, wait_seconds=30), ThreadPool(16)
def decode():
    for _ in range(50):
        with budget.reserve(100):
            sum(range(200))
def client():
    for _ in range(120):
        with gevent.Timeout(10):
            pool.apply(decode)
gevent.joinall([gevent.spawn(client) for _ in range(32)], raise_error=True)
assert budget.in_use == 0, budget.in_use
print("all decoded")
"""


def test_the_memory_budget_never_hangs_a_decode_thread_under_gevent():
    # A patched threading.Condition contended across OS threads missed wake-ups: a decode hung
    # for ever and its request with it (nginx gave up after 30 s).
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", BUDGET_UNDER_GEVENT],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0 and "all decoded" in out, err[-1500:]


STUCK_DECODE_UNDER_GEVENT = """
from gevent import monkey; monkey.patch_all()
import time
from serving.web.cpu_threads import CpuThreads
native_sleep = monkey.get_original("time", "sleep")
started = time.monotonic()
try:
    CpuThreads(2).run(native_sleep, 5.0, timeout=0.5)
except TimeoutError:
    print(f"gave up after {time.monotonic() - started:.2f} s")
"""


def test_a_stuck_decode_thread_gives_up_at_its_deadline():
    done = subprocess.run(
        [sys.executable, "-c", STUCK_DECODE_UNDER_GEVENT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    waited = re.search(r"gave up after ([\d.]+) s", done.stdout)
    assert waited, done.stdout + done.stderr[-1500:]
    assert 0.5 <= float(waited.group(1)) < 2.0


def _fine_pattern(width: int, height: int) -> np.ndarray:
    """Every column and row its own value (steep sawtooth ramps) over a 4-pixel checkerboard: a
    crop a few pixels out of place, or scaled differently, gives other pixels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([(x * 7) % 256, (y * 11) % 256, ((x // 4 + y // 4) % 2) * 255], -1).astype(np.uint8)


def _reference_crop(source: np.ndarray, side: int, fraction: float = 0.875, shift: float = 0.0) -> np.ndarray:
    """The documented rule computed here, not by serving/images.py: resize (bilinear) so the
    shorter side is side / fraction, then slice out the centre side x side; ``shift`` moves the
    slice by that share of the longer side (to show a misplaced crop fails the comparison)."""
    height, width = source.shape[:2]
    short = round(side / fraction)
    resized_size = (round(width * short / min(width, height)), round(height * short / min(width, height)))
    resized = np.asarray(Image.fromarray(source).resize(resized_size, Image.Resampling.BILINEAR))
    top, left = (resized_size[1] - side) // 2, (resized_size[0] - side) // 2
    if width >= height:
        left += round(shift * resized_size[0])
    else:
        top += round(shift * resized_size[1])
    return resized[top : top + side, left : left + side]


@pytest.mark.parametrize("source_size", [(384, 256), (256, 384), (768, 512), (300, 200)])
def test_the_crop_is_the_centre_the_rule_defines_pixel_for_pixel(source_size):
    """crop: shorter side to 224 / 0.875 = 256, centre 224 x 224, bilinear. These source sizes
    make the resized image whole pixels, so the reference is a plain slice of it."""
    source = _fine_pattern(*source_size)
    served = prepare_image(_encoded(Image.fromarray(source)), (224, 224), 10**8, "crop").astype(int)
    reference = _reference_crop(source, 224).astype(int)
    assert served.shape == reference.shape == (224, 224, 3)
    assert np.abs(served - reference).max() <= 1  # the same pixels, within resampling rounding
    # The comparison tells crops apart: 10 % off centre, or the whole shorter side kept (1.0).
    for wrong in (_reference_crop(source, 224, shift=0.1), _reference_crop(source, 224, fraction=1.0)):
        assert np.abs(served - wrong.astype(int)).mean() > 20
    # So does a crop 3 pixels out of place.
    assert (
        np.abs(served[:, :-3] - reference[:, 3:]).max() > 1 and np.abs(served[:-3] - reference[3:]).max() > 1
    )


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_header_says_how_many_pixels_without_decoding():
    from serving.images import header_pixels

    assert header_pixels(_png(300, 168)) == 300 * 168
    assert header_pixels(_png(12_000, 12_000)) == 144_000_000  # a small file of many pixels
    assert header_pixels(b"not an image") is None
    assert header_pixels(b"") is None


def test_only_small_images_in_all_are_decoded_on_the_event_loop():
    from serving.web.classify import INLINE_DECODE_PIXELS, decodes_inline

    thumbnail = _png(300, 168)
    assert decodes_inline([thumbnail])
    assert not decodes_inline([thumbnail] * (INLINE_DECODE_PIXELS // (300 * 168) + 1))  # the total counts
    assert not decodes_inline([_png(4000, 3000)])  # 12 MP: a decode thread's work
    assert not decodes_inline([_png(5000, 5000)[:200]])  # cut short: the header may still say
    assert not decodes_inline([thumbnail, b"garbage"])  # unreadable: the decode thread explains


def _jpeg(width: int, height: int, **save) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 40)).save(buffer, "JPEG", **save)
    return buffer.getvalue()


def test_a_small_image_that_is_costly_to_read_is_decoded_off_the_event_loop():
    from serving.images import header_pixels
    from serving.web.classify import INLINE_DECODE_BYTES, decodes_inline

    baseline = _jpeg(300, 168)
    assert decodes_inline([baseline])
    # 15,000 empty comment markers before the frame header: Pillow walks each one in Python.
    padded = baseline[:2] + b"\xff\xfe\x00\x02" * 15_000 + baseline[2:]
    assert header_pixels(padded) == 300 * 168  # still a small image...
    assert not decodes_inline([padded])  # ...but too many bytes to read on the loop
    progressive = _jpeg(300, 168, progressive=True)  # one decode pass per scan
    assert len(progressive) < INLINE_DECODE_BYTES and not decodes_inline([progressive])
