"""Input scaling, as data: each preprocessing is an optional RGB-to-BGR flip and a per-channel
(x - mean) / scale, which every runtime runs inside its compiled model (TensorFlow ops, an
OpenVINO PrePostProcessor) on the uint8 batch, so the worker's Python thread does none of it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preprocessing:
    name: str
    reverse_channels: bool = False  # RGB to BGR, before mean and scale
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # in the channel order after any flip
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def is_identity(self) -> bool:
        return not self.reverse_channels and self.mean == (0.0,) * 3 and self.scale == (1.0,) * 3


PREPROCESSORS: dict[str, Preprocessing] = {
    # RGB to BGR, minus the ImageNet mean (Keras ResNet50, VGG)
    "caffe": Preprocessing("caffe", reverse_channels=True, mean=(103.939, 116.779, 123.68)),
    # -1..1 (Keras MobileNet, Inception)
    "tf": Preprocessing("tf", mean=(127.5,) * 3, scale=(127.5,) * 3),
    # 0..1, then the ImageNet mean and std per channel (DenseNet, ported torch models)
    "torch": Preprocessing(
        "torch", mean=(255 * 0.485, 255 * 0.456, 255 * 0.406), scale=(255 * 0.229, 255 * 0.224, 255 * 0.225)
    ),
    "unit": Preprocessing("unit", scale=(255.0,) * 3),  # 0..1
    "none": Preprocessing("none"),  # raw 0..255, for models that scale their own input
}
caffe = PREPROCESSORS["caffe"]
