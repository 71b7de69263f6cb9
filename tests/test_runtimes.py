"""The model runtimes: OpenVINO against TensorFlow, the conversion cache, the fallback, telemetry."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from serving.images import prepare_image
from serving.models import RuntimeOptions, load_classifier
from serving.models import runtimes as runtimes_module

from .support import COLOURS, ROOT, TESTDATA, TINY_INPUT, colour_image

PHOTOS = ("shuttle.jpg", "flower.jpg", "airdale.jpg")


def tensorflow() -> RuntimeOptions:
    return RuntimeOptions(runtime="tensorflow")


def openvino(cache_dir=None, precision: str = "f32") -> RuntimeOptions:
    return RuntimeOptions(runtime="openvino", precision=precision, cache_dir=cache_dir)


def colour_classifier(colour_model, options: RuntimeOptions):
    model_path, labels_path = colour_model
    return load_classifier(str(model_path), labels=str(labels_path), preprocess="unit", options=options)


def test_the_colour_model_answers_the_same_on_openvino_as_on_tensorflow(colour_model, tmp_path):
    on_tf = colour_classifier(colour_model, tensorflow())
    on_ov = colour_classifier(colour_model, openvino(tmp_path))
    assert (on_tf.runtime, on_ov.runtime) == ("tensorflow", "openvino")
    assert on_ov.runtime == "openvino" and on_ov.precision in ("f32", "bf16")
    images = np.stack(
        [
            prepare_image(colour_image(c, seed=i), (TINY_INPUT, TINY_INPUT), 10**6)
            for i, c in enumerate(list(COLOURS) * 3)
        ]
    )
    np.testing.assert_allclose(on_ov.predict(images), on_tf.predict(images), atol=1e-5)
    assert [on_ov.labels[i] for i in on_ov.predict(images).argmax(axis=1)] == list(COLOURS) * 3


def test_a_second_start_uses_the_cached_conversion(colour_model, tmp_path, caplog):
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        with caplog.at_level(logging.INFO, logger="serving.models"):
            colour_classifier(colour_model, openvino(tmp_path))
        timings.append(time.perf_counter() - started)
    print(f"\nOpenVINO load: converted {timings[0]:.2f} s, from the cache {timings[1]:.2f} s")
    assert "cache miss" in caplog.text and "cache hit" in caplog.text
    assert str(tmp_path / "openvino") in caplog.text  # the log says where the cache is
    assert len(list((tmp_path / "openvino").iterdir())) == 1


def test_a_failing_conversion_falls_back_to_tensorflow_with_one_log_line(colour_model, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported layer")

    monkeypatch.setattr(runtimes_module, "openvino_model", broken)
    with caplog.at_level(logging.WARNING):
        classifier = colour_classifier(colour_model, RuntimeOptions(runtime="auto"))
    assert classifier.runtime == "tensorflow"
    [line] = [r.getMessage() for r in caplog.records if "OpenVINO could not run" in r.getMessage()]
    assert "unsupported layer" in line and "serving it with TensorFlow" in line


def test_without_openvino_auto_serves_with_tensorflow_and_says_why(colour_model, tmp_path):
    model_path, labels_path = colour_model
    probe = "\n".join(
        [
            "import logging, sys",
            "sys.modules['openvino'] = None  # as if it were not installed",
            "logging.basicConfig(level=logging.INFO)",
            "from serving.models import RuntimeOptions, load_classifier",
            f"c = load_classifier({str(model_path)!r}, labels={str(labels_path)!r}, preprocess='unit',",
            "                    options=RuntimeOptions(runtime='auto'))",
            "print('RUNTIME', c.runtime)",
        ]
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RUNTIME tensorflow" in out.stdout
    assert "OpenVINO is not importable" in out.stderr


def test_openvino_sends_no_telemetry(colour_model, tmp_path):
    """A fresh process converts a model; nothing in it may open a connection to another host."""
    model_path, labels_path = colour_model
    probe = "\n".join(
        [
            "import socket, sys",
            "attempts = []",
            "real_connect = socket.socket.connect",
            "def connect(self, address):",
            "    attempts.append(address)",
            "    return real_connect(self, address)",
            "socket.socket.connect = connect",
            "from serving.models import RuntimeOptions, load_classifier",
            f"c = load_classifier({str(model_path)!r}, labels={str(labels_path)!r}, preprocess='unit',",
            "                    options=RuntimeOptions(runtime='openvino', cache_dir=None))",
            "import openvino.tools.ovc.convert_impl as convert_impl",
            "telemetry = (convert_impl.tm.__name__, sys.modules.get('openvino_telemetry'))",
            "print('RUNTIME', c.runtime, 'TELEMETRY', *telemetry)",
            "remote = [a for a in attempts if not (isinstance(a, str) or a[0] in ('127.0.0.1', '::1'))]",
            "print('CONNECTIONS', remote)",
        ]
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RUNTIME openvino TELEMETRY openvino.tools.ovc.telemetry_stub None" in out.stdout
    assert "CONNECTIONS []" in out.stdout
    assert not (tmp_path / "intel").exists()  # no consent file or client id written either


def test_bf16_asked_of_a_cpu_without_it_reports_the_precision_it_runs(colour_model, tmp_path, caplog):
    import openvino as ov

    classifier = colour_classifier(colour_model, openvino(tmp_path, precision="bf16"))
    supported = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert classifier.precision == ("bf16" if supported else "f32")
    if not supported:
        assert "does not support bf16" in caplog.text


def wide_band_image(centre: str, edges: str) -> bytes:
    """3:1 wide: ``centre`` fills the middle third, ``edges`` the outer two thirds."""
    image = Image.new("RGB", (300, 100), COLOURS[edges])
    image.paste(COLOURS[centre], (100, 0, 200, 100))
    buffer = __import__("io").BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_crop_sees_the_centre_and_squash_the_whole_image(colour_model):
    classifier = colour_classifier(colour_model, tensorflow())
    data = wide_band_image(centre="green", edges="red")
    for resize, expected in (("crop", "green"), ("squash", "red")):
        pixels = prepare_image(data, classifier.input_size, 10**6, resize)
        assert classifier.labels[int(classifier.predict(pixels[None]).argmax())] == expected, resize


@pytest.mark.slow
@pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"test photos not found at {TESTDATA}")
def test_the_bundled_model_on_openvino_matches_tensorflow(tmp_path):
    import openvino as ov

    on_tf = load_classifier("efficientnet_lite0", options=tensorflow())
    timings = []
    for _ in range(2):  # converted, then from the cache
        started = time.perf_counter()
        on_ov = load_classifier("efficientnet_lite0", options=openvino(tmp_path))
        timings.append(time.perf_counter() - started)
    print(
        f"\nEfficientNet-Lite0 on OpenVINO: build + convert {timings[0]:.2f} s, "
        f"build + cache hit {timings[1]:.2f} s"
    )
    photos = [
        prepare_image((TESTDATA / name).read_bytes(), on_tf.input_size, 10**8, "crop") for name in PHOTOS
    ]
    noise = list(np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8))
    batch = np.stack(photos + noise)
    expected, got = on_tf.predict(batch), on_ov.predict(batch)
    print(f"OpenVINO f32 against TensorFlow, max |prob diff|: {np.abs(got - expected).max():.2e}")
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(got - expected).max() < 1e-4
    on_bf16 = load_classifier("efficientnet_lite0", options=openvino(tmp_path, precision="bf16"))
    photos_only = np.stack(photos)
    assert (on_bf16.predict(photos_only).argmax(axis=1) == expected[: len(PHOTOS)].argmax(axis=1)).all()
    print(
        f"bf16 asked; the CPU runs {on_bf16.precision} "
        f"(capabilities {ov.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')})"
    )


@pytest.mark.parametrize("runtime", ["tensorflow", "openvino"])
def test_every_preprocessing_runs_inside_the_runtime_as_numpy_defines_it(runtime, tmp_path):
    import keras

    from serving.models.keras_classifier import KerasClassifier
    from serving.models.preprocessing import PREPROCESSORS

    from .support import reference_preprocess

    inputs = keras.Input((6, 5, 3))  # per-channel means: the output shows the scaled input
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    batch = np.random.default_rng(1).integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    for name, preprocessing in PREPROCESSORS.items():
        classifier = KerasClassifier(
            model,
            name,
            ["a", "b", "c"],
            preprocessing,
            options=RuntimeOptions(runtime=runtime, cache_dir=tmp_path),
        )
        assert classifier.runtime == runtime
        expected = model(reference_preprocess(preprocessing, batch)).numpy()
        np.testing.assert_allclose(classifier.compiled.call(batch), expected, rtol=1e-5, atol=1e-4)
