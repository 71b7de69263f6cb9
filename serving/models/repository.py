"""A model repository: many models and versions in one folder, laid out as Triton and
TF Serving users know it.

    DIR/
      products/
        config.json          optional, for every version:
                             {"preprocess": "tf", "resize": "squash", "batch_size": 8}
        1/model.keras        (or model.h5)
        1/labels.txt         one class name a line (or labels.json)
        2/model.keras
        2/labels.txt
        2/config.json        optional, overrides the model's for this version
      documents/
        1/...

A worker serves one version: ``--model-repository DIR --model products [--model-version 2]``
(unset: the newest version folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.models.classifier import ModelUnavailable
from serving.settings import MODEL_NAME, RESIZE_MODES, VERSION

MODEL_FILES = ("model.keras", "model.h5")
LABEL_FILES = ("labels.txt", "labels.json")
PREPROCESSES = ("caffe", "tf", "torch", "unit", "none")
CONFIG_KEYS = {"preprocess", "resize", "batch_size"}


@dataclass(frozen=True)
class ModelSource:
    """One version's files and settings, as found in the repository."""

    name: str
    version: str
    model_file: Path
    labels_file: Path
    preprocess: str | None = None
    resize: str | None = None
    batch_size: int | None = None


def versions(model_dir: Path) -> list[str]:
    """The version folders of one model, oldest first."""
    found = [p.name for p in model_dir.iterdir() if p.is_dir() and VERSION.fullmatch(p.name)]
    return sorted(found, key=int)


def index(repository: Path) -> dict[str, list[str]]:
    """Every model in the repository and its versions."""
    if not repository.is_dir():
        return {}
    return {
        p.name: versions(p)
        for p in sorted(repository.iterdir())
        if p.is_dir() and MODEL_NAME.fullmatch(p.name)
    }


def _config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{path} is not a JSON object: {exc}") from None
    if not isinstance(config, dict) or set(config) - CONFIG_KEYS:
        raise ModelUnavailable(f"{path} may hold only {', '.join(sorted(CONFIG_KEYS))}")
    if config.get("preprocess", "caffe") not in PREPROCESSES:
        raise ModelUnavailable(f"{path}: preprocess is one of {', '.join(PREPROCESSES)}")
    if config.get("resize", "crop") not in RESIZE_MODES:
        raise ModelUnavailable(f"{path}: resize is one of {', '.join(RESIZE_MODES)}")
    batch = config.get("batch_size", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ModelUnavailable(f"{path}: batch_size is a whole number from 1")
    return config


def _one_of(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ModelUnavailable(f"{folder} has no {what} ({' or '.join(names)})")


def locate(repository: Path, name: str, version: str | None = None) -> ModelSource:
    """The files of model ``name`` at ``version`` (unset: its newest), or ModelUnavailable
    saying what is missing."""
    if not MODEL_NAME.fullmatch(name):
        raise ModelUnavailable(f"{name!r} is not a model name (letters, digits, '_' and '-')")
    model_dir = repository / name
    if not model_dir.is_dir():
        known = ", ".join(index(repository)) or "none"
        raise ModelUnavailable(f"The repository {repository} has no model {name!r} (it has: {known}).")
    found = versions(model_dir)
    if version is None:
        if not found:
            raise ModelUnavailable(f"{model_dir} has no version folder (1, 2, ...).")
        version = found[-1]
    elif version not in found:
        raise ModelUnavailable(
            f"{model_dir} has no version {version} (it has: {', '.join(found) or 'none'})."
        )
    folder = model_dir / version
    config = {**_config(model_dir / "config.json"), **_config(folder / "config.json")}
    return ModelSource(
        name=name,
        version=version,
        model_file=_one_of(folder, MODEL_FILES, "model file"),
        labels_file=_one_of(folder, LABEL_FILES, "labels file"),
        preprocess=config.get("preprocess"),
        resize=config.get("resize"),
        batch_size=config.get("batch_size"),
    )
