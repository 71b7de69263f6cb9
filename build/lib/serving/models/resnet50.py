"""Keras ResNet50: ImageNet weights from Keras's cache (downloaded once), random, or a local .h5."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .classifier import ModelUnavailable
from .keras_classifier import KerasClassifier
from .labels import imagenet_labels, imagenet_wnids
from .preprocessing import caffe
from .runtimes import DEFAULT_OPTIONS, RuntimeOptions

WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
RANDOM_WEIGHTS_NOTE = "resnet50 with random weights (--weights none): predictions are meaningless"
# Keras downloads with urllib and no timeout: a network that drops packets would hold the start
# for minutes. A download that sends nothing for this long fails, and start-up goes on from there.
DOWNLOAD_STALL_SECONDS = 20.0


def cached_weights_path() -> Path:
    """Where keras.utils.get_file keeps the ImageNet weights."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / WEIGHTS_FILE


def imagenet_weights_cached() -> bool:
    return cached_weights_path().is_file()


@contextmanager
def _download_stall_limit(seconds: float) -> Iterator[None]:
    """Bound every socket wait of the download (a worker loads its model before it opens others)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_resnet50(
    weights: str, resize: str = "crop", options: RuntimeOptions = DEFAULT_OPTIONS
) -> KerasClassifier:
    import keras

    note = ""
    if weights == "none":
        model, note = keras.applications.ResNet50(weights=None), RANDOM_WEIGHTS_NOTE
    elif weights == "imagenet":
        try:
            with _download_stall_limit(DOWNLOAD_STALL_SECONDS):
                model = keras.applications.ResNet50(weights="imagenet")
        except Exception as exc:  # keras raises a bare Exception when the download fails
            raise ModelUnavailable(
                f"ResNet50 ImageNet weights are not in {cached_weights_path()} and could not be "
                f"downloaded ({exc}); use --model efficientnet_lite0 (bundled, offline), "
                "--weights PATH for a local .h5 file, or --weights none for random weights.",
                cause=str(exc),
            ) from None
    else:
        if not Path(weights).is_file():
            raise ModelUnavailable(f"ResNet50 weights file {weights} does not exist.")
        try:
            model = keras.applications.ResNet50(weights=weights)
        except Exception as exc:  # h5py's OSError, or keras's ValueError for a layer mismatch
            raise ModelUnavailable(
                f"Could not load ResNet50 weights from {weights} ({exc}); expected ResNet50 weights "
                "with the ImageNet top, as model.save_weights() or keras.applications writes them.",
                cause=str(exc),
            ) from None
    # Random weights are new at every start: a converted copy would never be used again.
    return KerasClassifier(
        model,
        "resnet50",
        imagenet_labels(),
        caffe,
        note,
        wnids=imagenet_wnids(),
        resize=resize,
        options=options,
        cacheable=weights != "none",
    )
