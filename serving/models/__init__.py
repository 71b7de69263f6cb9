"""Choose and load the model a worker serves."""

from __future__ import annotations

import logging
from pathlib import Path

from .classifier import Classifier, KerasClassifier, NullClassifier
from .labels import imagenet_labels, load_labels
from .preprocessing import PREPROCESSORS
from .resnet50 import ModelUnavailable, imagenet_weights_cached, load_resnet50

log = logging.getLogger(__name__)

__all__ = ["Classifier", "ModelUnavailable", "choose_model", "load_classifier"]


def configure_tensorflow(threads: int) -> None:
    """Thread pools must be set before TensorFlow runs anything."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


def choose_model(model: str, weights: str) -> tuple[str, str]:
    """Resolve --model auto. Returns (model name, reason for the log)."""
    if model != "auto":
        return model, "chosen with --model"
    if weights != "imagenet":
        return "resnet50", f"--weights {weights} applies to resnet50"
    if imagenet_weights_cached():
        return "resnet50", "its ImageNet weights are in the Keras cache"
    return "resnet50", "its ImageNet weights will be downloaded once"


def _load_efficientnet_lite0() -> Classifier:
    from .efficientnet_lite0 import build_efficientnet_lite0

    return KerasClassifier(build_efficientnet_lite0(), "efficientnet_lite0", imagenet_labels(),
                           PREPROCESSORS["none"])


def _load_custom(path: str, labels_path: str | None, preprocess: str) -> Classifier:
    import keras

    if not Path(path).is_file():
        raise ModelUnavailable(f"Model file {path} does not exist.")
    if not labels_path:
        raise ModelUnavailable(f"--labels is required to serve your own model {path}.")
    labels = load_labels(labels_path)
    model = keras.models.load_model(path, compile=False)
    return KerasClassifier(model, Path(path).stem, labels, PREPROCESSORS[preprocess])


def load_classifier(model: str, weights: str = "imagenet", labels: str | None = None,
                    preprocess: str = "caffe") -> Classifier:
    """Load the model to serve, logging one line that says which and why."""
    name, reason = choose_model(model, weights)
    if name == "null":
        classifier = NullClassifier(imagenet_labels())
    elif name == "efficientnet_lite0":
        classifier = _load_efficientnet_lite0()
    elif name == "resnet50":
        try:
            classifier = load_resnet50(weights)
        except ModelUnavailable as exc:
            if model != "auto":
                raise
            log.warning("Serving the bundled efficientnet_lite0 (ImageNet, offline) because ResNet50's "
                        "ImageNet weights are not cached and could not be downloaded: %s", exc.cause)
            return _load_efficientnet_lite0()
    elif name.endswith((".keras", ".h5")) or Path(name).exists():
        classifier = _load_custom(name, labels, preprocess)
    else:
        raise ModelUnavailable(
            f"Unknown model {name!r}: use resnet50, efficientnet_lite0, null, or a .keras/.h5 path."
        )
    log.info("Serving %s: %s", classifier.name, reason)
    return classifier
