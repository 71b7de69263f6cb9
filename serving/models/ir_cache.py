"""The converted OpenVINO models on disk (``--model-cache``): keyed by the Keras model's content
and the OpenVINO version, written aside and renamed into place, so a restart reads the model
instead of converting it again and a reader never sees half a model."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras
    import openvino

log = logging.getLogger(__name__)

__all__ = ["cache_key", "converted_model", "default_cache_dir", "save_atomically"]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "keras-redis-server"


def cache_key(model: keras.Model, ov_version: str) -> str:
    """The model's content (architecture and every weight) and the OpenVINO version."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(ov_version.encode())
    digest.update(model.to_json().encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def converted_model(
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
        save_atomically(ov, converted, entry)
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


def save_atomically(
    ov: ModuleType, converted: openvino.Model, entry: Path, extra: dict[str, str] | None = None
) -> None:
    """Written aside, then renamed into place: a reader never sees half a model. ``extra``: text
    files saved beside it (the INT8 guard report)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=entry.parent))
    try:
        ov.save_model(converted, staging / "model.xml", compress_to_fp16=False)
        for name, text in (extra or {}).items():
            (staging / name).write_text(text)
        os.replace(staging, entry)
    except OSError:
        if not (entry / "model.xml").is_file():  # else another worker cached it first: fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
