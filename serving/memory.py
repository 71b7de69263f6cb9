"""Give freed memory back to the operating system.

A web process decodes large images in many threads. glibc's malloc gives each thread an arena of
its own (up to 8 per core) and, once a large block has been freed, raises its mmap threshold so
later blocks of that size come from those arenas, where freed memory stays with the process: a
burst of 6000x6000 PNGs left gigabytes of RSS behind. Fixing the threshold keeps large blocks
(Pillow's image blocks, numpy arrays of pixels) in their own mappings, returned when freed, and
two arenas bound what small allocations can scatter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20  # blocks of 1 MB and more: their own mapping, unmapped when freed
TRIM_THRESHOLD_BYTES = 8 << 20
ARENAS = 2


def return_freed_memory() -> bool:
    """Set glibc's malloc to hand freed memory back; False where there is no glibc (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no glibc mallopt here: freed memory is returned as the platform's malloc does")
        return False
    ok = all(
        mallopt(option, value) == 1
        for option, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
            (M_ARENA_MAX, ARENAS),
        )
    )
    return ok
