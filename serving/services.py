"""What every view needs, built once per app by serving/app.py and read from the current app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from helpers import MemoryBudget
from settings import Settings

from .queue import RedisQueue
from .workers import WorkerDirectory

EXTENSION = "keras_serving"


@dataclass(frozen=True)
class Services:
    settings: Settings
    queue: RedisQueue
    workers: WorkerDirectory
    decode_budget: MemoryBudget  # decoded pixels this process holds at once


def services() -> Services:
    return current_app.extensions[EXTENSION]
