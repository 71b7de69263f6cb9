"""Class names: the shipped ImageNet list, or a user's labels file."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

IMAGENET_LABELS_PATH = Path(__file__).resolve().parents[1] / "data" / "imagenet_labels.json"


@cache
def _imagenet_entries() -> tuple[dict[str, str], ...]:
    return tuple(json.loads(IMAGENET_LABELS_PATH.read_text()))


def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard index order."""
    return tuple(entry["label"] for entry in _imagenet_entries())


def imagenet_wnids() -> tuple[str, ...]:
    """Their WordNet ids: "crane" and "maillot" each name two classes; a wnid names one."""
    return tuple(entry["wnid"] for entry in _imagenet_entries())


def _from_mapping(mapping: dict[Any, Any]) -> list[str]:
    """{label: index} as Keras's class_indices writes it, or {index: label}."""
    if all(isinstance(v, int | np.integer) for v in mapping.values()):
        by_index = {int(index): str(label) for label, index in mapping.items()}
    else:
        by_index = {int(index): str(label) for index, label in mapping.items()}
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError("label indices must run 0..N-1 without gaps")
    return [by_index[i] for i in range(len(by_index))]


def load_labels(path: str | Path) -> list[str]:
    """Read a JSON list, a JSON dict, a class_indices.npy dict (the operator's own file), or a
    text file of one class name a line (a model repository's labels.txt)."""
    path = Path(path)
    if path.suffix == ".txt":
        labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not labels:
            raise ValueError(f"{path}: no class names")
        return labels
    if path.suffix == ".npy":
        # A saved dict is an object array; np.load needs allow_pickle for it. This is a local
        # file the operator named on the command line, never data from Redis or a client.
        loaded = np.load(path, allow_pickle=True)
        data = loaded.item() if loaded.shape == () else loaded.tolist()
    else:
        data = json.loads(path.read_text())
    if isinstance(data, dict):
        return _from_mapping(data)
    if isinstance(data, list) and all(isinstance(label, str) for label in data):
        return list(data)
    raise ValueError(f"{path}: expected a list of names or a {{label: index}} dict")
