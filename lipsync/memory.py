"""Process memory readings used to measure what loading an avatar costs."""

from __future__ import annotations

import os
import resource


def rss_bytes() -> int:
    """Return the resident set size of this process in bytes (Linux; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
