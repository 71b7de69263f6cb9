"""What the worker needs from a model: input size, labels, and batch -> probabilities."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .runtimes import CompiledModel, TrafficQuantizer


class ModelUnavailable(RuntimeError):
    """The chosen model cannot be loaded; the message tells the operator what to do instead."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return probabilities


def look_like_probabilities(outputs: np.ndarray) -> bool:
    return bool(outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


class Classifier:
    """A loaded model ready to serve. Subclasses implement ``predict``."""

    def __init__(
        self,
        name: str,
        input_size: tuple[int, int],
        labels: Sequence[str],
        note: str = "",
        wnids: Sequence[str] | None = None,
        resize: str = "squash",
    ):
        self.name = name
        self.input_size = input_size  # (width, height), as Pillow counts
        self.labels = tuple(labels)
        self.wnids = tuple(wnids) if wnids else None  # WordNet ids, for ImageNet models
        self.note = note  # e.g. a warning that the weights are random
        self.resize = resize  # crop or squash: how the web tier fits uploads to input_size
        self.runtime = ""
        self.precision = ""
        self.int8_agreement: float | None = None  # the INT8 guard's top-1 agreement with f32, if tried
        self.chosen_batch_size: int | None = None  # the largest batch --precision auto measured best
        # Set when INT8 can still be made from served images (--calibrate-on-traffic).
        self.traffic_int8: TrafficQuantizer | None = None

    def use(self, compiled: CompiledModel) -> None:
        """Serve ``compiled`` from the next call on (INT8 made from traffic)."""
        raise NotImplementedError(f"{self.name} cannot change how it runs")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """uint8 (n, h, w, 3) -> probabilities (n, classes)."""
        raise NotImplementedError

    def warm_up(self, batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run each batch size on blank images, so the first clients don't pay for graph tracing
        and kernel set-up (about a second for EfficientNet-Lite0 on 2 CPU cores). Returns the
        seconds of a second, warm call of each size: what the batches cost (serving/batching.py)."""
        width, height = self.input_size
        seconds = {}
        for size in sorted(set(batch_sizes)):
            blank = np.zeros((size, height, width, 3), np.uint8)
            self.predict(blank)
            started = time.perf_counter()
            self.predict(blank)
            seconds[size] = time.perf_counter() - started
        return seconds

    def top_k(self, probabilities: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """Per row, the k most probable classes, highest first, with their ids."""
        k = min(k, probabilities.shape[1])
        best = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
        rows = np.arange(len(probabilities))[:, None]
        order = np.argsort(-probabilities[rows, best], axis=1, kind="stable")
        best = best[rows, order]
        ranked = []
        for row, indexes in enumerate(best.tolist()):
            predictions = []
            for index in indexes:
                prediction: dict[str, Any] = {
                    "label": self.labels[index],
                    "probability": float(probabilities[row, index]),
                    "class_id": index,
                }
                if self.wnids:
                    prediction["wnid"] = self.wnids[index]
                predictions.append(prediction)
            ranked.append(predictions)
        return ranked


class NullClassifier(Classifier):
    """Constant answers with no compute: measures the web + Redis + batching pipeline alone."""

    def __init__(
        self,
        labels: Sequence[str],
        input_size: tuple[int, int] = (224, 224),
        wnids: Sequence[str] | None = None,
    ):
        super().__init__(
            "null", input_size, labels, note="null model: constant output, no inference", wnids=wnids
        )
        self.runtime = "none"
        ranks = np.arange(len(self.labels), 0, -1, dtype=np.float32)
        self._row = ranks / ranks.sum()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._row, (len(batch), len(self._row)))
