"""Where a loaded Keras model runs: TensorFlow, or OpenVINO on the CPU.

Keras stays the model format and the loader. For OpenVINO the Keras model is converted
(``openvino.convert_model``), cached on disk by its content and the OpenVINO version so a restart
does not convert again (``ir_cache.py``), and compiled for the CPU in f32 or bf16. A conversion
that fails falls back to TensorFlow with one log line, never a crash.

OpenVINO's converter reports usage to Intel through the openvino-telemetry package unless told
not to. A server must never phone home, so before OpenVINO is imported its telemetry module is
made unavailable in this process: the converter then uses its own no-op stub and sends nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .auto_choice import Choice, choose, sizes_to_time, time_calls
from .int8 import CalibrationError, QuantizeSettings
from .ir_cache import cache_key, converted_model, save_atomically
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
    calibration_dir: Path | None = None  # images to calibrate INT8 on (serving/models/int8.py)
    int8_min_agreement: float = 0.97  # the guard's threshold: below it INT8 does not serve
    int8_settings: QuantizeSettings = QuantizeSettings()
    max_image_pixels: int = 40_000_000  # calibration images are decoded as uploads are
    batch_size: int = 1  # the largest batch the worker may run: auto times batches up to it
    choose_batch_size: bool = True  # auto: choose the batch size too (False: run batch_size)
    batch_latency: float = 0.0  # auto: the longest model call it may choose a batch size for (0: any)
    traffic_images: int = 0  # > 0: calibrate INT8 on this many served images (traffic_calibration.py)


DEFAULT_OPTIONS = RuntimeOptions()


@dataclass(frozen=True)
class CompiledModel:
    """A model ready to call: uint8 batch (n, h, w, 3) -> outputs (n, classes), its input scaling
    done inside."""

    call: Callable[[np.ndarray], np.ndarray]
    runtime: str
    precision: str
    int8_agreement: float | None = None  # the guard's measured top-1 agreement, when INT8 was tried
    batch_size: int | None = None  # the largest batch to run, when auto chose it by measuring
    # Serving f32/bf16 with --calibrate-on-traffic: makes the INT8 model from served images.
    traffic_int8: TrafficQuantizer | None = None


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
    model: keras.Model,
    preprocessing: Preprocessing,
    options: RuntimeOptions,
    cacheable: bool = True,
    resize: str = "squash",
) -> CompiledModel:
    """The model, behind its preprocessing, on the runtime ``options`` ask for; auto: OpenVINO on
    a CPU-only host when it imports, else TensorFlow. Any OpenVINO failure falls back to TensorFlow."""
    runtime, reason = choose_runtime(options.runtime)
    if runtime == "openvino":
        try:
            return openvino_model(model, preprocessing, options, cacheable, resize)
        except CalibrationError:  # the operator asked for INT8 and must fix the folder
            raise
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
    if options.precision == "int8":
        log.warning("INT8 needs OpenVINO; TensorFlow runs %s in f32", model.name)
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
    model: keras.Model,
    preprocessing: Preprocessing,
    options: RuntimeOptions,
    cacheable: bool,
    resize: str = "squash",
) -> CompiledModel:
    silence_openvino_telemetry()
    import openvino as ov

    core = ov.Core()
    why_not_cached = "no cache folder was given"
    if not cacheable:
        why_not_cached = "its weights are random, new at every start"
    cache_dir = options.cache_dir if cacheable else None
    ir = _with_preprocessing(ov, converted_model(model, ov, core, cache_dir, why_not_cached), preprocessing)
    has_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    unquantized = "bf16" if has_bf16 else "f32"
    precision = options.precision
    quantized, agreement = None, None
    # Calibrated on served images (--calibrate-on-traffic): cached here once its guard passed.
    traffic = options.traffic_images > 0 and options.calibration_dir is None and precision in ("int8", "auto")
    traffic_entry = _int8_entry(model, preprocessing, ov, options, cache_dir, "traffic") if traffic else None
    if precision in ("int8", "auto"):
        if options.calibration_dir is not None:
            quantized, agreement = _guarded_int8(
                model, preprocessing, ov, core, ir, options, cache_dir, resize
            )
        elif traffic:
            quantized, agreement = _traffic_int8_cached(model.name, core, options, traffic_entry)
        elif precision == "int8":
            raise CalibrationError(
                "--precision int8 needs images to calibrate on: give --calibration-dir DIR "
                "or --calibrate-on-traffic N"
            )
    if precision == "int8":
        precision = "int8" if quantized is not None else unquantized
    chosen_batch = None
    if precision == "auto":
        candidates = {"f32": ir, **({"bf16": ir} if has_bf16 else {})}
        if quantized is not None:
            candidates["int8"] = quantized
        choice = _measured_choice(model.name, model.input_shape[1:], core, candidates, options)
        precision, chosen_batch = choice.precision, choice.batch_size
        options = replace(options, batch_size=chosen_batch)  # what INT8 from traffic is timed at
    serving_ir = quantized if precision == "int8" else ir
    compiled = _compiled(ov, core, serving_ir, precision, options, model.name, agreement)
    compiled = replace(compiled, batch_size=chosen_batch)
    if traffic and quantized is not None and compiled.precision != "int8":
        # Earlier traffic made an INT8 model that passed its guard, and it was just timed slower
        # than what serves here: quantizing again would make the same model.
        log.info("INT8 from earlier traffic for %s is slower on this CPU: not calibrating again", model.name)
    elif traffic and compiled.precision != "int8":
        quantizer = TrafficQuantizer(
            ov, core, ir, compiled.precision, model.name, model.input_shape[1:], options, traffic_entry
        )
        compiled = replace(compiled, traffic_int8=quantizer)
    return compiled


def _compiled(
    ov: ModuleType,
    core: openvino.Core,
    ir: openvino.Model,
    precision: str,
    options: RuntimeOptions,
    name: str,
    agreement: float | None = None,
) -> CompiledModel:
    """``ir`` compiled for the CPU in ``precision``, behind a call that serves one batch."""
    # INT8 compiles with the f32 hint: what it does not quantize runs in f32 (a bf16 hint would be
    # reported but not used).
    hint = "f32" if precision == "int8" else precision
    compiled = core.compile_model(ir, "CPU", _cpu_config(hint, options))
    # What the CPU plugin really runs: a CPU without BF16 runs f32 whatever was asked.
    used = "bf16" if compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "f32"
    if used != hint:
        log.warning("OpenVINO runs %s in %s: this CPU does not support %s", name, used, precision)
    if precision == "int8":
        used = "int8"
    requests = threading.local()  # an infer request serves one call at a time: one per thread

    def call(batch: np.ndarray) -> np.ndarray:
        request = getattr(requests, "request", None)
        if request is None:
            request = requests.request = compiled.create_infer_request()
        outputs: np.ndarray = request.infer([batch], share_inputs=True)[0]
        return outputs.copy()  # the next call reuses the buffer

    log.info("Running %s with OpenVINO %s on the CPU in %s", name, ov.get_version().split("-")[0], used)
    return CompiledModel(call, "openvino", used, agreement)


def _cpu_config(hint: str, options: RuntimeOptions) -> dict[str, object]:
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    return config


@dataclass(frozen=True)
class Int8Attempt:
    """What quantizing on served images came to: the INT8 model to switch to, or why not."""

    model: CompiledModel | None
    reason: str
    final: bool = False  # no other sample would do better: stop sampling


class TrafficQuantizer:
    """INT8 from served images, for a model that started unquantized (the worker samples them:
    serving/models/traffic_calibration.py). Quantize, guard on held-out images, with --precision
    auto time INT8 against what serves, cache it, compile it. Runs on a background thread."""

    def __init__(
        self,
        ov: ModuleType,
        core: openvino.Core,
        ir: openvino.Model,
        serving: str,
        name: str,
        input_shape: tuple[int, int, int],
        options: RuntimeOptions,
        entry: Path | None,
    ):
        self._ov, self._core, self._ir = ov, core, ir
        self.serving = serving  # the precision that serves until INT8 is switched to
        self.name = name
        self.input_shape = input_shape
        self._options = options
        self._entry = entry

    def __call__(self, images: np.ndarray) -> Int8Attempt:
        from .int8 import quantize_and_guard, split_calibration

        calibration = split_calibration(images)
        options = self._options
        quantized, result = quantize_and_guard(
            self._core, self._ir, calibration, options.int8_settings, options.int8_min_agreement
        )
        if not result.accepted:
            return Int8Attempt(None, result.reason)
        # Cached once its guard passed, whatever it measures here: the guard's verdict holds on
        # any CPU, the speed does not, and every start measures that again (openvino_model).
        if self._entry is not None:  # accepted only: other traffic may pass where this failed
            try:
                save_atomically(self._ov, quantized, self._entry, {"guard.json": result.report.to_json()})
            except OSError as exc:
                log.warning("Could not cache the INT8 model at %s (%s)", self._entry, exc)
        if options.precision == "auto":
            candidates = {self.serving: self._ir, "int8": quantized}
            # At the batch size the worker runs: it keeps that whichever model serves.
            fastest = _measured_choice(
                self.name, self.input_shape, self._core, candidates, options, [options.batch_size]
            ).precision
            if fastest != "int8":
                return Int8Attempt(
                    None, f"INT8 passed its guard, but {fastest} is faster on this CPU", final=True
                )
        agreement = _finite(result.report.agreement)
        return Int8Attempt(
            _compiled(self._ov, self._core, quantized, "int8", options, self.name, agreement), result.reason
        )


def _int8_entry(
    model: keras.Model,
    preprocessing: Preprocessing,
    ov: ModuleType,
    options: RuntimeOptions,
    cache_dir: Path | None,
    source: str,
) -> Path | None:
    from .int8 import cache_entry

    if cache_dir is None:
        return None
    model_key = cache_key(model, ov.get_version()) + repr(preprocessing)
    return cache_entry(ov, cache_dir, model_key, source, options.int8_settings)


def _traffic_int8_cached(
    name: str, core: openvino.Core, options: RuntimeOptions, entry: Path | None
) -> tuple[openvino.Model | None, float | None]:
    """The INT8 model an earlier start calibrated on traffic, when its guard passed."""
    from .int8 import cached_int8

    try:
        cached = cached_int8(core, entry, options.int8_min_agreement)
    except Exception as exc:  # an unreadable cache entry: calibrate on traffic again
        log.warning("The cached INT8 model of %s cannot be read (%s); calibrating again", name, exc)
        return None, None
    if cached is None or not cached.accepted:
        return None, None
    log.info("INT8 calibrated on earlier traffic for %s: %s", name, cached.reason)
    return cached.model, _finite(cached.report.agreement)


def _measured_choice(
    name: str,
    input_shape: tuple[int, int, int],
    core: openvino.Core,
    candidates: dict[str, openvino.Model],
    options: RuntimeOptions,
    sizes: list[int] | None = None,
) -> Choice:
    """The precision and the largest batch that move the most images per second here, measured
    at ``sizes`` (by default 1, 2, 4, ... up to the worker's largest batch, or that batch alone
    when it was set), the table logged. Nothing to choose from: nothing measured."""
    if not sizes:
        sizes = sizes_to_time(options.batch_size) if options.choose_batch_size else [options.batch_size]
    if len(candidates) == 1 and len(sizes) == 1:
        return Choice(next(iter(candidates)), sizes[0], "one precision and one batch size: not timed")
    seconds = {}
    for precision, ir in candidates.items():  # one compiled at a time: each holds its weights
        hint = "f32" if precision == "int8" else precision
        seconds[precision] = time_calls(
            core.compile_model(ir, "CPU", _cpu_config(hint, options)), input_shape, sizes
        )
    choice = choose(seconds, options.batch_latency)
    log.info("Precision auto for %s, measured: %s", name, choice)
    return choice


def _guarded_int8(
    model: keras.Model,
    preprocessing: Preprocessing,
    ov: ModuleType,
    core: openvino.Core,
    ir: openvino.Model,
    options: RuntimeOptions,
    cache_dir: Path | None,
    resize: str,
) -> tuple[openvino.Model | None, float | None]:
    """The INT8 model when its guard passes (and the measured agreement); None: serve f32/bf16,
    logged with the reason. Any failure of NNCF keeps f32/bf16 serving."""
    from .int8 import int8_model, load_calibration

    assert options.calibration_dir is not None
    _, height, width, _ = model.input_shape
    try:
        calibration = load_calibration(
            options.calibration_dir, (width, height), resize, options.max_image_pixels
        )
        model_key = cache_key(model, ov.get_version()) + repr(preprocessing)
        result = int8_model(
            ov,
            core,
            ir,
            calibration,
            model_key,
            cache_dir,
            options.int8_settings,
            options.int8_min_agreement,
            save_atomically,
        )
    except CalibrationError:
        raise
    except Exception as exc:  # whatever NNCF raises, the worker serves on in f32/bf16
        log.warning(
            "INT8 quantization of %s failed (%s: %s); serving it unquantized",
            model.name,
            type(exc).__name__,
            exc,
        )
        return None, None
    if not result.accepted:
        log.warning("INT8 refused for %s: %s; serving it unquantized", model.name, result.reason)
        return None, _finite(result.report.agreement)
    log.info("INT8 accepted for %s: %s", model.name, result.reason)
    return result.model, _finite(result.report.agreement)


def _finite(value: float) -> float | None:
    return None if value != value else value  # NaN: no confident guard image to measure on


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
