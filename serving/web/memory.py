"""Give the memory of large decodes back to the operating system.

A web process decodes large images in many threads. glibc's malloc keeps freed memory for reuse:
after a burst of 6000x6000 PNGs the process held gigabytes it no longer used, spread over an
arena per thread. Two remedies, both cheap where they apply:

- after a large decode has released its memory, ``malloc_trim`` hands free pages back;
- web-only processes use two arenas instead of up to eight per core.

Model workers are left alone: fixing malloc's thresholds there would turn every large tensor
TensorFlow allocates into fresh pages (measured: ResNet50 at one image 101 ms -> 143 ms).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8
WEB_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


LIBC = _libc()


def release_freed_memory() -> None:
    """Hand free heap pages back to the system (glibc only; elsewhere nothing to do)."""
    trim = getattr(LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def limit_arenas() -> bool:
    """Two malloc arenas for a web process's threads; False where there is no glibc mallopt."""
    mallopt = getattr(LIBC, "mallopt", None)
    if mallopt is None:
        log.info("no glibc mallopt here: the platform's malloc keeps its own arenas")
        return False
    return bool(mallopt(M_ARENA_MAX, WEB_ARENAS) == 1)
