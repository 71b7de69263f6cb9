"""A Keras model as a Classifier: one call per batch on the chosen runtime (input scaling
included), probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .classifier import Classifier, look_like_probabilities, softmax
from .preprocessing import Preprocessing
from .runtimes import DEFAULT_OPTIONS, CompiledModel, RuntimeOptions, compile_model

if TYPE_CHECKING:
    import keras


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether the model's last layer is a softmax (a Softmax layer, or a softmax activation)."""
    import keras

    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax"


class KerasClassifier(Classifier):
    def __init__(
        self,
        model: keras.Model,
        name: str,
        labels: Sequence[str],
        preprocess: Preprocessing,
        note: str = "",
        wnids: Sequence[str] | None = None,
        resize: str = "squash",
        options: RuntimeOptions = DEFAULT_OPTIONS,
        cacheable: bool = True,
    ):
        _, height, width, channels = model.input_shape
        if channels != 3 or not height or not width:
            raise ValueError(f"{name}: expected input (height, width, 3), got {model.input_shape}")
        classes = model.output_shape[-1]
        if classes != len(labels):
            raise ValueError(f"{name}: the model has {classes} outputs but {len(labels)} labels were given")
        super().__init__(name, (width, height), labels, note, wnids=wnids, resize=resize)
        self.model = model
        self.preprocess = preprocess
        compiled = compile_model(model, preprocess, options, cacheable, resize)
        # The quantizer is the classifier's alone, so dropping it once INT8 from traffic is over
        # frees the unquantized graph it holds.
        self.traffic_int8 = compiled.traffic_int8
        self.chosen_batch_size = compiled.batch_size
        self.use(replace(compiled, traffic_int8=None))
        # Decided once, from the model: a last layer that is not a softmax means logits, unless
        # its outputs are probabilities anyway (e.g. a softmax written as a Lambda).
        self.outputs_probabilities = ends_in_softmax(model) or self._probe_outputs_probabilities()

    def use(self, compiled: CompiledModel) -> None:
        # One assignment each: a call in another thread sees the old model or the new, whole.
        self.compiled = compiled
        self._call = compiled.call
        self.runtime, self.precision, self.int8_agreement = (
            compiled.runtime,
            compiled.precision,
            compiled.int8_agreement,
        )

    def _probe_outputs_probabilities(self) -> bool:
        width, height = self.input_size
        probe = np.random.default_rng(0).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
        return look_like_probabilities(self._outputs(probe))

    def _outputs(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch).astype(np.float32, copy=False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        outputs = self._outputs(batch)
        return outputs if self.outputs_probabilities else softmax(outputs)
