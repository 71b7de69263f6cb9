"""INT8: the OpenVINO model quantized with NNCF post-training quantization, guarded by its own
accuracy.

The user's calibration folder is prepared exactly as the web tier prepares uploads
(``serving.images.prepare_image`` with the model's input size and resize mode), then split:
every ``GUARD_EVERY``-th image (in file-name order) is held out as a guard image, the rest
calibrate. Before INT8 serves, it is compared with the f32 model on the guard images: top-1
agreement on the images f32 is at least ``CONFIDENT`` sure of (ambiguous images say nothing about
the quantization, noise even less), and the mean change of f32's top-1 probability. Below the
threshold the caller keeps f32/bf16 and logs why.

The quantized IR (already taking uint8 NHWC, its input scaling inside) is cached with its guard
report, keyed by the converted model's key, the calibration set's digest, the OpenVINO and NNCF
versions and the quantize settings: a restart loads it and starts in INT8 without calibrating.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from serving.images import ImageError, prepare_image

from .classifier import ModelUnavailable

if TYPE_CHECKING:
    import openvino

log = logging.getLogger(__name__)

CONFIDENT = 0.5  # guard images whose f32 top-1 probability is at least this decide the agreement
MIN_CONFIDENT = 20  # fewer confident guard images than this: INT8 is not judged, so not served
GUARD_EVERY = 3  # one image in three is held out of calibration to check the result
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class CalibrationError(ModelUnavailable):
    """--precision int8 cannot start: no calibration folder, or too few images in it."""


def has_vnni() -> bool:
    """8-bit dot products (AVX512-VNNI, AVX-VNNI or AMX): no overflow fix needed."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_vnni", " avx_vnni", " amx_int8"))


@dataclass(frozen=True)
class QuantizeSettings:
    """What nncf.quantize is asked for. The defaults are what kept the bundled Lite0 at >= 98 %
    agreement with f32 (README); the other values exist to test that the guard refuses them."""

    overflow_fix: str = (
        ""  # disable, first_layer_only, enable; "": disable on VNNI CPUs, else first_layer_only
    )
    subset_size: int = 300
    fast_bias_correction: bool = True
    per_tensor_weights: bool = False  # breaks Lite0 (about 74 % agreement)
    activation_range: str = ""  # "": nncf's default; mean_quantile breaks Lite0 (about 40 %)

    def resolved(self) -> QuantizeSettings:
        if self.overflow_fix:
            return self
        fix = "disable" if has_vnni() else "first_layer_only"
        return QuantizeSettings(
            fix, self.subset_size, self.fast_bias_correction, self.per_tensor_weights, self.activation_range
        )

    def key(self) -> str:
        return json.dumps(asdict(self.resolved()), sort_keys=True)


@dataclass(frozen=True)
class Calibration:
    calibration: np.ndarray  # uint8 (n, h, w, 3)
    guard: np.ndarray  # uint8 (m, h, w, 3), never calibrated on
    digest: str  # of every prepared pixel, in order, and the split


def load_calibration(directory: Path, size: tuple[int, int], resize: str, max_pixels: int) -> Calibration:
    """The folder's images, prepared as uploads are, split into calibration and guard images."""
    if not directory.is_dir():
        raise CalibrationError(f"the calibration folder {directory} does not exist")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    images = []
    for path in files:
        try:
            images.append(prepare_image(path.read_bytes(), size, max_pixels, resize))
        except (ImageError, OSError) as exc:
            log.warning("calibration image %s skipped: %s", path, exc)
    if len(images) < 2 * GUARD_EVERY:
        raise CalibrationError(f"the calibration folder {directory} has {len(images)} usable images")
    return split_calibration(np.stack(images))


def split_calibration(images: np.ndarray) -> Calibration:
    """Every ``GUARD_EVERY``-th image held out for the guard, the rest to calibrate on."""
    guard_rows = np.arange(len(images)) % GUARD_EVERY == GUARD_EVERY - 1
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{images.shape} every {GUARD_EVERY}".encode())
    digest.update(images.tobytes())
    return Calibration(images[~guard_rows], images[guard_rows], digest.hexdigest())


@dataclass(frozen=True)
class GuardReport:
    agreement: float  # top-1 agreement with f32 on the confident guard images (nan: none)
    agreement_all: float  # on every guard image
    confident: int
    guard_images: int
    mean_abs_change: float  # mean |f32 top-1 probability - INT8's probability of that class|
    mean_drop: float  # the signed mean of the same (INT8 is often more confident: negative)
    quantize_seconds: float

    def verdict(self, min_agreement: float) -> tuple[bool, str]:
        if min_agreement <= 0:  # e.g. timing random weights, which no image makes confident
            return True, f"guard off (--int8-min-agreement {min_agreement}); agreement {self.agreement:.1%}"
        if self.confident < MIN_CONFIDENT:
            return False, (
                f"only {self.confident} of {self.guard_images} guard images are >= {CONFIDENT} "
                f"confident in f32 (at least {MIN_CONFIDENT} are needed to judge INT8)"
            )
        summary = (
            f"INT8 agrees with f32 on {self.agreement:.1%} of {self.confident} confident guard images "
            f"({self.agreement_all:.1%} of all {self.guard_images}; mean |change| of the top-1 "
            f"probability {self.mean_abs_change:.3f})"
        )
        if self.agreement < min_agreement:
            return False, f"{summary}, below --int8-min-agreement {min_agreement}"
        return True, summary

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> GuardReport:
        return cls(**json.loads(text))


def nncf_version() -> str:
    import nncf

    return str(nncf.__version__)


def quantize(ir: openvino.Model, calibration: np.ndarray, settings: QuantizeSettings) -> openvino.Model:
    """The INT8 model (``ir`` is left as it is). nncf's telemetry is off (runtimes silences
    openvino_telemetry first) and so are its progress bars, which ignore the log level."""
    import nncf
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    settings = settings.resolved()
    nncf.set_log_level(logging.ERROR)
    advanced: dict[str, Any] = {"overflow_fix": OverflowFix(settings.overflow_fix)}
    if settings.per_tensor_weights:
        advanced["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    if settings.activation_range:
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        estimator = getattr(RangeEstimatorParametersSet, settings.activation_range.upper())
        advanced["activations_range_estimator_params"] = estimator
    with contextlib.redirect_stdout(io.StringIO()):
        return nncf.quantize(
            ir,
            nncf.Dataset(calibration, lambda image: image[None]),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=min(settings.subset_size, len(calibration)),
            fast_bias_correction=settings.fast_bias_correction,
            advanced_parameters=AdvancedQuantizationParameters(**advanced),
        )


def _probabilities(compiled: Any, images: np.ndarray, batch: int = 8) -> np.ndarray:
    request = compiled.create_infer_request()
    outputs = np.concatenate(
        [
            np.array(request.infer([images[i : i + batch]])[0], np.float32)
            for i in range(0, len(images), batch)
        ]
    )
    if outputs.min() >= 0 and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return probabilities


def compare(
    core: openvino.Core, reference: openvino.Model, quantized: openvino.Model, guard: np.ndarray
) -> dict[str, Any]:
    """INT8 against f32 on the guard images: the GuardReport's numbers."""
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    p_ref = _probabilities(core.compile_model(reference, "CPU", config), guard)
    p_q = _probabilities(core.compile_model(quantized, "CPU", config), guard)
    rows = np.arange(len(guard))
    top = p_ref.argmax(axis=1)
    confident = p_ref[rows, top] >= CONFIDENT
    same = top == p_q.argmax(axis=1)
    change = p_ref[rows, top] - p_q[rows, top]
    return {
        "agreement": float(same[confident].mean()) if confident.any() else float("nan"),
        "agreement_all": float(same.mean()),
        "confident": int(confident.sum()),
        "guard_images": len(guard),
        "mean_abs_change": float(np.abs(change).mean()),
        "mean_drop": float(change.mean()),
    }


@dataclass(frozen=True)
class Int8Result:
    model: openvino.Model | None  # None: the guard refused it (or nothing could be quantized)
    report: GuardReport
    accepted: bool
    reason: str


def cache_entry(
    ov: ModuleType, cache_dir: Path | None, model_key: str, source: str, settings: QuantizeSettings
) -> Path | None:
    """Where the INT8 model of this model, calibration source (a folder's digest, or "traffic"),
    OpenVINO, NNCF and settings is cached; None: no cache."""
    if cache_dir is None:
        return None
    digest = hashlib.blake2b(digest_size=16)
    for part in (model_key, source, ov.get_version(), nncf_version(), settings.key()):
        digest.update(part.encode() + b"\0")
    return cache_dir / "openvino-int8" / digest.hexdigest()


def cached_int8(core: openvino.Core, entry: Path | None, min_agreement: float) -> Int8Result | None:
    """The cached INT8 model and its guard's verdict (judged again: the threshold may have
    changed); None: nothing cached there."""
    report_file = entry / "guard.json" if entry is not None else None
    if report_file is None or not report_file.is_file():
        return None
    report = GuardReport.from_json(report_file.read_text())
    accepted, reason = report.verdict(min_agreement)
    xml = report_file.parent / "model.xml"
    model = core.read_model(xml) if accepted and xml.is_file() else None
    if accepted and model is None:
        accepted, reason = False, "the cached guard report has no model beside it"
    log.info("INT8 model cache hit: %s (no calibration needed)", report_file.parent)
    return Int8Result(model, report, accepted, reason)


def quantize_and_guard(
    core: openvino.Core,
    ir: openvino.Model,
    calibration: Calibration,
    settings: QuantizeSettings,
    min_agreement: float,
) -> tuple[openvino.Model, Int8Result]:
    """Quantize on the calibration images, then judge the result on the guard images. Returns
    the quantized model whatever the verdict (to cache it with its report) and the verdict."""
    started = time.perf_counter()
    quantized = quantize(ir, calibration.calibration, settings)
    seconds = time.perf_counter() - started
    report = GuardReport(
        **compare(core, ir, quantized, calibration.guard), quantize_seconds=round(seconds, 2)
    )
    accepted, reason = report.verdict(min_agreement)
    log.info(
        "Quantized to INT8 with NNCF %s on %d calibration images in %.1f s; guard: %s",
        nncf_version(),
        len(calibration.calibration),
        seconds,
        reason,
    )
    return quantized, Int8Result(quantized if accepted else None, report, accepted, reason)


def int8_model(
    ov: ModuleType,
    core: openvino.Core,
    ir: openvino.Model,
    calibration: Calibration,
    model_key: str,
    cache_dir: Path | None,
    settings: QuantizeSettings,
    min_agreement: float,
    save: Any,
) -> Int8Result:
    """The guarded INT8 model of ``ir`` (the uint8-input model), from the cache when this model,
    calibration set, OpenVINO, NNCF and settings were quantized and guarded before."""
    entry = cache_entry(ov, cache_dir, model_key, calibration.digest, settings)
    cached = cached_int8(core, entry, min_agreement)
    if cached is not None:
        return cached
    quantized, result = quantize_and_guard(core, ir, calibration, settings, min_agreement)
    if entry is not None:  # a refusal too: the same folder would be refused again
        try:
            save(ov, quantized, entry, {"guard.json": result.report.to_json()})
        except OSError as exc:
            log.warning("Could not cache the INT8 model at %s (%s)", entry, exc)
    return result
