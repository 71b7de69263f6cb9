"""EfficientNet-Lite0 (Keras port): parity with the PyTorch reference and real predictions."""

from pathlib import Path

import numpy as np
import pytest

from serving.models.efficientnet_lite0 import INPUT_SIZE, LOGITS_LAYER, build_efficientnet_lite0
from tools.make_efficientnet_lite0_reference import PHOTOS, REFERENCE_PATH, digest, reference_inputs

pytestmark = pytest.mark.slow  # starts servers, browsers or full-size models

TESTDATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "testdata"

needs_testdata = pytest.mark.skipif(
    not TESTDATA_DIR.is_dir(), reason=f"test photos not available: {TESTDATA_DIR} is absent"
)


@pytest.fixture(scope="module")
def model():
    return build_efficientnet_lite0()


@pytest.fixture(scope="module")
def photos():
    inputs = reference_inputs(TESTDATA_DIR)
    return np.stack([inputs[name] for name in PHOTOS]).astype(np.float32)


def test_model_shapes(model):
    assert model.input_shape == (None, *INPUT_SIZE, 3)
    assert model.output_shape == (None, 1000)


def test_matches_the_pytorch_reference_outputs(model):
    """Logits the PyTorch EfficientNet-Lite0 gave for the same inputs, written once by
    tools/make_efficientnet_lite0_reference.py: synthetic images always, the photos where present."""
    import keras

    reference = np.load(REFERENCE_PATH)
    inputs = reference_inputs(TESTDATA_DIR)
    names = [str(name) for name in reference["names"] if str(name) in inputs]
    assert {"noise", "gradient", "grey"} <= set(names)
    rows = [list(reference["names"]).index(name) for name in names]
    for name, row in zip(names, rows):
        assert digest(inputs[name]) == reference["sha256"][row], (
            f"{name}: not the input the reference was made from"
        )
    pixels = np.stack([inputs[name] for name in names]).astype(np.float32)
    torch_logits = reference["logits"][rows]
    shifted = np.exp(torch_logits - torch_logits.max(axis=1, keepdims=True))
    torch_probs = shifted / shifted.sum(axis=1, keepdims=True)

    logits_model = keras.Model(model.input, model.get_layer(LOGITS_LAYER).output)
    keras_logits = np.asarray(logits_model(pixels, training=False))
    keras_probs = np.asarray(model(pixels, training=False))

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
