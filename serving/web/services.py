"""What every view needs, built once per app by serving/app.py and read from the current app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from serving.images import MemoryBudget
from serving.queue import RedisQueue
from serving.settings import Settings
from serving.tenants.limits import TenantLimits
from serving.web.cpu_threads import CpuThreads
from serving.web.model_directory import ModelDirectory

EXTENSION = "keras_serving"


@dataclass(frozen=True)
class Services:
    settings: Settings
    queue: RedisQueue  # the clients; each model version's queue is found by ``models``
    models: ModelDirectory
    decode_budget: MemoryBudget  # decoded pixels this process holds at once
    cpu_threads: CpuThreads  # where images are decoded: off the event loop
    limits: TenantLimits  # each tenant's rate and open jobs (with --auth keys)


def services() -> Services:
    serving: Services = current_app.extensions[EXTENSION]
    return serving
