"""Choose and load the model a worker serves."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier, ModelUnavailable, NullClassifier
from .labels import imagenet_labels, imagenet_wnids, load_labels
from .preprocessing import PREPROCESSORS
from .resnet50 import imagenet_weights_cached, load_resnet50
from .runtimes import DEFAULT_OPTIONS, RuntimeOptions

log = logging.getLogger(__name__)

__all__ = [
    "Choice",
    "Classifier",
    "ModelUnavailable",
    "RuntimeOptions",
    "choose_models",
    "configure_tensorflow",
    "load_classifier",
]

BUILT_IN = ("resnet50", "efficientnet_lite0", "null")
IMAGENET_MODELS = ("resnet50", "efficientnet_lite0")  # evaluated with a centre crop


def configure_tensorflow(threads: int) -> None:
    """Thread pools must be set before TensorFlow runs anything."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


@dataclass(frozen=True)
class Choice:
    model: str  # a built-in name or a model file
    reason: str  # for the log line that says what serves and why


def choose_models(model: str, weights: str) -> list[Choice]:
    """The models to try, in order: the first that loads serves."""
    if model != "auto":
        return [Choice(model, "chosen with --model")]
    if weights != "imagenet":
        return [Choice("resnet50", f"--weights {weights} applies to resnet50")]
    if imagenet_weights_cached():
        return [Choice("resnet50", "its ImageNet weights are in the Keras cache")]
    return [
        Choice("resnet50", "its ImageNet weights were downloaded to the Keras cache"),
        Choice(
            "efficientnet_lite0",
            "the bundled ImageNet model (offline), because ResNet50's "
            "ImageNet weights are not cached and could not be downloaded",
        ),
    ]


def resize_mode(model: str, resize: str) -> str:
    """auto: the centre crop the ImageNet models were evaluated with; for a user's model, the
    squash that Keras's image_dataset_from_directory trains with."""
    if resize != "auto":
        return resize
    return "crop" if model in IMAGENET_MODELS else "squash"


def _load_efficientnet_lite0(resize: str, options: RuntimeOptions) -> Classifier:
    from .efficientnet_lite0 import build_efficientnet_lite0
    from .keras_classifier import KerasClassifier

    return KerasClassifier(
        build_efficientnet_lite0(),
        "efficientnet_lite0",
        imagenet_labels(),
        PREPROCESSORS["none"],
        wnids=imagenet_wnids(),
        resize=resize,
        options=options,
    )


def _load_custom(
    path: str, labels_path: str | None, preprocess: str, resize: str, options: RuntimeOptions
) -> Classifier:
    import keras

    from .keras_classifier import KerasClassifier

    if not Path(path).is_file():
        raise ModelUnavailable(f"Model file {path} does not exist.")
    if not labels_path:
        raise ModelUnavailable(f"--labels is required to serve your own model {path}.")
    try:
        labels = load_labels(labels_path)
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"The labels file {labels_path} cannot be read: {exc}") from None
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many kinds for a broken or foreign file
        raise ModelUnavailable(
            f"The model file {path} cannot be loaded: {exc.__class__.__name__}: {exc}"
        ) from None
    try:
        return KerasClassifier(
            model, Path(path).stem, labels, PREPROCESSORS[preprocess], resize=resize, options=options
        )
    except ValueError as exc:  # input shape or labels that do not fit the model
        raise ModelUnavailable(f"The model {path} cannot be served: {exc}") from None


def _load(
    model: str, weights: str, labels: str | None, preprocess: str, resize: str, options: RuntimeOptions
) -> Classifier:
    resize = resize_mode(model, resize)
    if model == "null":
        return NullClassifier(imagenet_labels(), wnids=imagenet_wnids())
    if model == "efficientnet_lite0":
        return _load_efficientnet_lite0(resize, options)
    if model == "resnet50":
        return load_resnet50(weights, resize, options)
    if model.endswith((".keras", ".h5")) or Path(model).exists():
        return _load_custom(model, labels, preprocess, resize, options)
    raise ModelUnavailable(f"Unknown model {model!r}: use {', '.join(BUILT_IN)}, or a .keras/.h5 path.")


def load_classifier(
    model: str,
    weights: str = "imagenet",
    labels: str | None = None,
    preprocess: str = "caffe",
    resize: str = "auto",
    options: RuntimeOptions = DEFAULT_OPTIONS,
) -> Classifier:
    """Load the model to serve on the runtime ``options`` ask for, logging one line that says
    which model serves and why."""
    choices = choose_models(model, weights)
    for position, choice in enumerate(choices, start=1):
        try:
            classifier = _load(choice.model, weights, labels, preprocess, resize, options)
        except ModelUnavailable as exc:
            if position == len(choices):
                raise
            log.warning("%s is unavailable: %s", choice.model, exc.cause)
            continue
        log.info("Serving %s: %s", classifier.name, choice.reason)
        return classifier
    raise AssertionError("choose_models returned no choice")
