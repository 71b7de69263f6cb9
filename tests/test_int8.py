"""--precision int8: NNCF quantization calibrated on a folder of photos, guarded by its agreement
with f32 on held-out images, cached so a restart does not calibrate again."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from PIL import Image

from serving.queue.messages import MessageError, ModelInfo
from serving.settings import load_settings

from .support import TESTDATA


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    """Random crops (35-100 % of the area) and flips of the test photos, as JPEG files."""
    from bench.calibration_photos import PHOTOS, write_crops

    if not all((TESTDATA / name).is_file() for name in PHOTOS):
        pytest.skip(f"the test photos are not in {TESTDATA}")
    folder = tmp_path_factory.mktemp("calibration")
    write_crops(folder, per_photo=40, source=TESTDATA)
    return folder


def lite0(tmp_path, calibration_dir, precision="int8", **changes):
    from serving.models import RuntimeOptions, load_classifier

    options = RuntimeOptions(
        "openvino", precision, cache_dir=tmp_path / "cache", calibration_dir=calibration_dir, **changes
    )
    return load_classifier("efficientnet_lite0", options=options)


@pytest.mark.slow
def test_lite0_int8_passes_its_guard_and_a_restart_does_not_calibrate_again(
    tmp_path, calibration_dir, monkeypatch, caplog
):
    from serving.models import int8
    from serving.worker.loop import describe

    caplog.set_level(logging.INFO)
    classifier = lite0(tmp_path, calibration_dir)
    print(f"Lite0 INT8 top-1 agreement with f32 on confident guard images: {classifier.int8_agreement}")
    assert classifier.precision == "int8"
    assert classifier.int8_agreement is not None and classifier.int8_agreement >= 0.97
    assert "Quantized to INT8" in caplog.text
    info = describe(classifier)
    assert (info.precision, info.int8_agreement) == ("int8", classifier.int8_agreement)
    assert ModelInfo.from_dict(info.as_dict()) == info
    shuttle = np.asarray(Image.open(TESTDATA / "shuttle.jpg").convert("RGB").resize((224, 224)))[None]
    first = classifier.predict(shuttle)
    assert int(first.argmax()) == 812  # space shuttle

    def no_calibration(*args, **kwargs):
        raise AssertionError("a cached INT8 model was quantized again")

    monkeypatch.setattr(int8, "quantize", no_calibration)
    caplog.clear()
    again = lite0(tmp_path, calibration_dir)
    assert again.precision == "int8"
    assert again.int8_agreement == classifier.int8_agreement
    assert "INT8 model cache hit" in caplog.text
    np.testing.assert_array_equal(again.predict(shuttle), first)  # the same IR, read back


@pytest.mark.slow
def test_the_guard_refuses_a_broken_quantization_and_f32_serves(tmp_path, calibration_dir, caplog):
    from serving.models.int8 import QuantizeSettings

    caplog.set_level(logging.INFO)
    # Per-tensor weights with mean-quantile activation ranges: measured at 40-74 % agreement.
    broken = QuantizeSettings(per_tensor_weights=True, activation_range="mean_quantile")
    classifier = lite0(tmp_path, calibration_dir, int8_settings=broken)
    print(f"broken INT8 top-1 agreement with f32: {classifier.int8_agreement}")
    assert classifier.precision in ("f32", "bf16")
    assert classifier.int8_agreement is not None and classifier.int8_agreement < 0.97
    assert "INT8 refused" in caplog.text and "below --int8-min-agreement 0.97" in caplog.text
    shuttle = np.asarray(Image.open(TESTDATA / "shuttle.jpg").convert("RGB").resize((224, 224)))[None]
    assert int(classifier.predict(shuttle).argmax()) == 812


@pytest.mark.slow
def test_auto_times_each_precision_it_may_use_and_serves_the_fastest(tmp_path, calibration_dir, caplog):
    caplog.set_level(logging.INFO)
    classifier = lite0(tmp_path, calibration_dir, precision="auto", batch_size=4)
    line = next(record.getMessage() for record in caplog.records if "Precision auto" in record.getMessage())
    print(line)
    tables = dict(re.findall(r"(f32|bf16|int8) \[([^]]*)\] img/s", line))
    assert "f32" in tables and "int8" in tables  # int8 passed its guard, so it was a candidate
    # Every candidate timed at 1, 2 and 4 images; the worker serves what the line says it chose.
    assert all(re.findall(r"(\d+): [0-9.]+", table) == ["1", "2", "4"] for table in tables.values())
    served = re.search(r"serving (\w+) in batches of up to (\d+)", line)
    assert served and (classifier.precision, classifier.chosen_batch_size) == (served[1], int(served[2]))
    assert classifier.int8_agreement is not None


def test_int8_without_calibration_images_is_refused_at_start():
    from serving.models import ModelUnavailable
    from serving.worker.factory import create_worker

    with pytest.raises(ModelUnavailable, match="--calibration-dir"):
        create_worker(load_settings(["--role", "worker", "--precision", "int8"]))
    settings = load_settings(["--precision", "int8", "--calibration-dir", "/photos"])
    assert (settings.calibration_dir, settings.int8_min_agreement) == ("/photos", 0.97)


def test_a_missing_calibration_folder_stops_the_worker(tmp_path):
    from serving.models import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="does not exist"):
        lite0(tmp_path, tmp_path / "nowhere")


def test_model_info_carries_the_int8_agreement_and_validates_it():
    info = ModelInfo("m", (224, 224), 1000, "crop", "openvino", "int8", int8_agreement=0.985)
    assert ModelInfo.from_dict(info.as_dict()) == info
    assert "int8_agreement" not in ModelInfo("m", (224, 224), 1000).as_dict()
    for bad in (1.5, "high", float("inf"), True):
        with pytest.raises(MessageError, match="int8_agreement"):
            ModelInfo.from_dict({**info.as_dict(), "int8_agreement": bad})
