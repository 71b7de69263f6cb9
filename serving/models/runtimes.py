"""Where a loaded Keras model runs: TensorFlow, or OpenVINO on the CPU.

Keras stays the model format and the loader. For OpenVINO the Keras model is converted
(``openvino.convert_model``), cached on disk by its content and the OpenVINO version so a restart
does not convert again, and compiled for the CPU in f32 or bf16. A conversion that fails falls
back to TensorFlow with one log line, never a crash.

OpenVINO's converter reports usage to Intel through the openvino-telemetry package unless told
not to. A server must never phone home, so before OpenVINO is imported its telemetry module is
made unavailable in this process: the converter then uses its own no-op stub and sends nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .preprocessing import Preprocessing

if TYPE_CHECKING:
    import keras
    import openvino
    import tensorflow as tf

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeOptions:
    runtime: str = "auto"
    precision: str = "auto"
    threads: int = 0  # threads for one model call; 0: the runtime's default (one per core)
    cache_dir: Path | None = None  # where converted models are kept; None: never cached


DEFAULT_OPTIONS = RuntimeOptions()


@dataclass(frozen=True)
class CompiledModel:
    """A model ready to call: uint8 batch (n, h, w, 3) -> outputs (n, classes), its input scaling
    done inside."""

    call: Callable[[np.ndarray], np.ndarray]
    runtime: str
    precision: str


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keras-redis-server"


def silence_openvino_telemetry() -> None:
    """Make sure OpenVINO sends no usage statistics from this process.

    Hiding openvino_telemetry before OpenVINO is first imported makes its converter fall back to
    the built-in no-op stub; if OpenVINO was imported earlier, the stub is put in its place.
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]  # None blocks the import
    import openvino.tools.ovc.convert_impl as convert_impl
    import openvino.tools.ovc.telemetry_stub as stub
    import openvino.tools.ovc.telemetry_utils as telemetry_utils

    convert_impl.tm = telemetry_utils.tm = stub


def compile_model(
    model: keras.Model, preprocessing: Preprocessing, options: RuntimeOptions, cacheable: bool = True
) -> CompiledModel:
    """The model, behind its preprocessing, on the runtime ``options`` ask for; auto: OpenVINO on
    a CPU-only host when it imports, else TensorFlow. Any OpenVINO failure falls back to TensorFlow."""
    runtime, reason = choose_runtime(options.runtime)
    if runtime == "openvino":
        try:
            return openvino_model(model, preprocessing, options, cacheable)
        except Exception as exc:  # whatever the converter raises, the worker serves on
            log.warning(
                "OpenVINO could not run %s (%s: %s); serving it with TensorFlow",
                model.name,
                type(exc).__name__,
                exc,
            )
            return tensorflow_model(model, preprocessing)
    if options.runtime == "auto":
        log.info("Running %s with TensorFlow: %s", model.name, reason)
    return tensorflow_model(model, preprocessing)


def choose_runtime(requested: str) -> tuple[str, str]:
    """The runtime to try and why: auto means OpenVINO unless TensorFlow has a GPU."""
    if requested != "auto":
        return requested, "chosen with --runtime"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "tensorflow", "TensorFlow sees a GPU"
    try:
        silence_openvino_telemetry()
        import openvino  # noqa: F401
    except ImportError as exc:
        return "tensorflow", f"OpenVINO is not importable ({exc})"
    return "openvino", "no GPU, and OpenVINO is installed"


def tensorflow_model(model: keras.Model, preprocessing: Preprocessing) -> CompiledModel:
    import tensorflow as tf

    _, height, width, channels = model.input_shape
    mean = tf.constant(preprocessing.mean, tf.float32)
    scale = tf.constant(preprocessing.scale, tf.float32)

    def run(pixels: tf.Tensor) -> tf.Tensor:
        x = tf.cast(pixels, tf.float32)
        if preprocessing.reverse_channels:
            x = tf.reverse(x, axis=[-1])
        if not preprocessing.is_identity:
            x = (x - mean) / scale
        return model(x, training=False)

    # One traced graph for every batch size: no per-call overhead of model.predict.
    traced = tf.function(run, input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8)])
    return CompiledModel(lambda batch: traced(batch).numpy(), "tensorflow", "f32")


def openvino_model(
    model: keras.Model, preprocessing: Preprocessing, options: RuntimeOptions, cacheable: bool
) -> CompiledModel:
    silence_openvino_telemetry()
    import openvino as ov

    core = ov.Core()
    why_not_cached = "no cache folder was given"
    if not cacheable:
        why_not_cached = "its weights are random, new at every start"
    ir = _with_preprocessing(
        ov,
        _converted(model, ov, core, options.cache_dir if cacheable else None, why_not_cached),
        preprocessing,
    )
    precision = options.precision
    if precision == "auto":
        precision = "bf16" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else "f32"
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    compiled = core.compile_model(ir, "CPU", config)
    # What the CPU plugin really runs: a CPU without BF16 runs f32 whatever was asked.
    used = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "f32"
    if used != precision:
        log.warning("OpenVINO runs %s in %s: this CPU does not support %s", model.name, used, precision)
    requests = threading.local()  # an infer request serves one call at a time: one per thread

    def call(batch: np.ndarray) -> np.ndarray:
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        outputs: np.ndarray = request.infer([batch], share_inputs=True)[0]
        return outputs.copy()  # the next call reuses the buffer

    log.info("Running %s with OpenVINO %s on the CPU in %s", model.name, ov.get_version().split("-")[0], used)
    return CompiledModel(call, "openvino", used)


def _with_preprocessing(ov: ModuleType, ir: openvino.Model, preprocessing: Preprocessing) -> openvino.Model:
    """The converted model taking uint8 NHWC pixels, its input scaling run by OpenVINO."""
    from openvino.preprocess import PrePostProcessor

    ppp = PrePostProcessor(ir)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NHWC"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if preprocessing.reverse_channels:
        steps.reverse_channels()
    if preprocessing.mean != (0.0,) * 3:
        steps.mean(list(preprocessing.mean))
    if preprocessing.scale != (1.0,) * 3:
        steps.scale(list(preprocessing.scale))
    return ppp.build()


def cache_key(model: keras.Model, ov_version: str) -> str:
    """The model's content (architecture and every weight) and the OpenVINO version."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(ov_version.encode())
    digest.update(model.to_json().encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def _converted(
    model: keras.Model, ov: ModuleType, core: openvino.Core, cache_dir: Path | None, why_not_cached: str = ""
) -> openvino.Model:
    """The OpenVINO model, from the disk cache when this model was converted before."""
    started = time.perf_counter()
    if cache_dir is None:
        converted = _convert(ov, model)
        log.info(
            "Converted %s to OpenVINO in %.1f s (not cached: %s)",
            model.name,
            time.perf_counter() - started,
            why_not_cached,
        )
        return converted
    entry = cache_dir / "openvino" / cache_key(model, ov.get_version())
    xml = entry / "model.xml"
    if xml.is_file():
        loaded = core.read_model(xml)
        log.info("OpenVINO model cache hit: %s (%.1f s)", entry, time.perf_counter() - started)
        return loaded
    converted = _convert(ov, model)
    seconds = time.perf_counter() - started
    try:
        _save_atomically(ov, converted, entry)
        log.info(
            "OpenVINO model cache miss: converted %s in %.1f s, cached at %s", model.name, seconds, entry
        )
    except OSError as exc:  # a read-only or full disk costs the next start a conversion, nothing more
        log.warning(
            "Converted %s to OpenVINO in %.1f s; could not cache it at %s (%s)",
            model.name,
            seconds,
            entry,
            exc,
        )
    return converted


def _convert(ov: ModuleType, model: keras.Model) -> openvino.Model:
    with warnings.catch_warnings():  # Keras notes that the converter names the input differently
        warnings.filterwarnings("ignore", "The structure of `inputs` doesn't match", UserWarning)
        return ov.convert_model(model)


def _save_atomically(ov: ModuleType, converted: openvino.Model, entry: Path) -> None:
    """Written aside, then renamed into place: a reader never sees half a model."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=entry.parent))
    try:
        ov.save_model(converted, staging / "model.xml", compress_to_fp16=False)
        os.replace(staging, entry)
    except OSError:
        if not (entry / "model.xml").is_file():  # else another worker cached it first: fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
