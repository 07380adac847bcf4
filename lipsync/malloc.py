"""glibc allocator tuning for services that allocate multi-megabyte buffers on every call."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameters from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30


def tune_malloc() -> bool:
    """Keep large allocations in the heap and freed memory in the process; return success.

    By default glibc serves allocations over 128 KiB-32 MiB with fresh mmap calls and returns
    them on free, so every 7 MB gRPC message pays page faults again. Raising both thresholds to
    1 GiB makes such buffers reuse heap memory. Returns False where glibc is not the allocator.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
    done = mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1 and done
    if done:
        logger.info("glibc malloc tuned: mmap and trim thresholds at %d MiB", THRESHOLD_BYTES >> 20)
    return done
