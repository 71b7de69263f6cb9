"""Input scaling, applied once per batch in the worker (float32, vectorised)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def caffe(batch: np.ndarray) -> np.ndarray:
    """RGB to BGR, minus the ImageNet mean (Keras ResNet50, VGG)."""
    return batch[..., ::-1].astype(np.float32) - _CAFFE_BGR_MEAN


def tf(batch: np.ndarray) -> np.ndarray:
    """Scale to -1..1 (Keras MobileNet, Inception)."""
    return batch.astype(np.float32) / 127.5 - 1.0


def torch(batch: np.ndarray) -> np.ndarray:
    """Scale to 0..1, then ImageNet mean and std per channel (DenseNet, ported torch models)."""
    return (batch.astype(np.float32) / 255.0 - _TORCH_MEAN) / _TORCH_STD


def unit(batch: np.ndarray) -> np.ndarray:
    """Scale to 0..1."""
    return batch.astype(np.float32) / 255.0


def none(batch: np.ndarray) -> np.ndarray:
    """Raw 0..255 pixels, for models that scale their own input."""
    return batch.astype(np.float32)


PREPROCESSORS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "caffe": caffe,
    "tf": tf,
    "torch": torch,
    "unit": unit,
    "none": none,
}
