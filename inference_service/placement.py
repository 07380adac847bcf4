"""Choosing the GPU for each avatar's UNet when the inference tier spreads avatars over GPUs."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterable

from lipsync.errors import FailedPrecondition


class GpuPlacement:
    """Pick a device id per avatar: a preferred GPU from config, else round-robin or least-loaded.

    `loaded_devices` returns the device ids of the avatars loaded right now, so least-loaded
    counts what is actually placed, not what was placed in the past.
    """

    def __init__(
        self,
        *,
        count: int,
        policy: str,
        preferred: dict[str, int],
        default_gpu: int,
        loaded_devices: Callable[[], Iterable[int]],
    ) -> None:
        for avatar_id, gpu in preferred.items():
            if count and not 0 <= gpu < count:
                raise FailedPrecondition(
                    f"gpus.preferred[{avatar_id!r}] is {gpu}, outside 0-{count - 1} (gpus.count)"
                )
        self.count = count
        self.policy = policy
        self.preferred = dict(preferred)
        self.default_gpu = default_gpu
        self._loaded_devices = loaded_devices
        self._next = itertools.cycle(range(count)) if count else None
        self._lock = threading.Lock()

    def choose(self, avatar_id: str) -> int:
        """Return the device id for a new load of avatar_id."""
        if avatar_id in self.preferred:
            return self.preferred[avatar_id]
        if not self.count:
            return self.default_gpu
        with self._lock:
            if self.policy == "least-loaded":
                load = Counter(self._loaded_devices())
                return min(range(self.count), key=lambda gpu: (load[gpu], gpu))
            return next(self._next)
