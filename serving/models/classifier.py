"""What the worker needs from a model: input size, labels, and batch -> probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Models that end in logits get a softmax; models that end in softmax are left alone."""
    outputs = outputs.astype(np.float32, copy=False)
    looks_like_probabilities = outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)
    return outputs if looks_like_probabilities else softmax(outputs)


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[list[dict]]:
    """Per row, the k most probable labels, highest first."""
    k = min(k, probabilities.shape[1])
    best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    rows = np.arange(len(probabilities))[:, None]
    order = np.argsort(-probabilities[rows, best], axis=1, kind="stable")
    best = best[rows, order]
    return [
        [{"label": labels[i], "probability": float(p)} for i, p in zip(idx, probabilities[r, idx])]
        for r, idx in enumerate(best)
    ]


class Classifier:
    """A loaded model ready to serve. Subclasses implement ``predict``."""

    def __init__(self, name: str, input_size: tuple[int, int], labels: Sequence[str], note: str = ""):
        self.name = name
        self.input_size = input_size  # (width, height), as Pillow counts
        self.labels = tuple(labels)
        self.note = note  # e.g. a warning that the weights are random

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, h, w, 3) -> probabilities (n, classes)."""
        raise NotImplementedError

    def warm_up(self, batch_sizes: Sequence[int]) -> None:
        """Run each batch size once on blank images, so the first clients don't pay for graph
        tracing and kernel set-up (about a second for EfficientNet-Lite0 on 2 CPU cores)."""
        width, height = self.input_size
        for size in sorted(set(batch_sizes)):
            self.predict(np.zeros((size, height, width, 3), np.uint8))

    def info(self) -> dict:
        info = {"name": self.name, "input_size": list(self.input_size), "classes": len(self.labels)}
        if self.note:
            info["note"] = self.note
        return info


class KerasClassifier(Classifier):
    def __init__(self, model, name: str, labels: Sequence[str],
                 preprocess: Callable[[np.ndarray], np.ndarray], note: str = ""):
        import tensorflow as tf

        _, height, width, channels = model.input_shape
        if channels != 3 or not height or not width:
            raise ValueError(f"{name}: expected input (height, width, 3), got {model.input_shape}")
        classes = model.output_shape[-1]
        if classes != len(labels):
            raise ValueError(f"{name}: the model has {classes} outputs but {len(labels)} labels were given")
        super().__init__(name, (width, height), labels, note)
        self.model = model
        self.preprocess = preprocess
        # One traced graph for every batch size: no per-call overhead of model.predict.
        self._call = tf.function(
            lambda x: model(x, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._call(self.preprocess(batch)).numpy()
        return as_probabilities(outputs)


class NullClassifier(Classifier):
    """Constant answers with no compute: measures the web + Redis + batching pipeline alone."""

    def __init__(self, labels: Sequence[str], input_size: tuple[int, int] = (224, 224)):
        super().__init__("null", input_size, labels, note="null model: constant output, no inference")
        ranks = np.arange(len(self.labels), 0, -1, dtype=np.float32)
        self._row = ranks / ranks.sum()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._row, (len(batch), len(self._row)))
