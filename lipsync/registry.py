"""A registry of loaded avatars: load once on first use, track use, evict within capacity.

Both tiers keep their avatars in one `ModelRegistry`. It loads an entry the first time it is
acquired (concurrent first requests share one load), counts the requests and streams using
each entry, and keeps the loaded set within `max_models` and `max_memory_bytes` by evicting
idle entries by the `lru` or `lfu` policy. An entry in use is never evicted: a load that cannot
fit beside the entries in use fails with RESOURCE_EXHAUSTED naming the numbers. Unloading an
entry in use only removes it from the registry; its users keep it until they release it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from lipsync.errors import ResourceExhausted

logger = logging.getLogger(__name__)


class Loadable(Protocol):
    @property
    def memory_bytes(self) -> int: ...


T = TypeVar("T", bound=Loadable)


@dataclass
class Entry(Generic[T]):
    """A loaded item and its usage statistics."""

    item: T
    load_ms: float
    loaded_unix_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    last_used_unix_ms: int = 0
    last_used_monotonic: float = field(default_factory=time.monotonic)
    usage_count: int = 0
    active_users: int = 0
    total_inference_time_ms: float = 0.0


class ModelRegistry(Generic[T]):
    """Keyed, capacity-bounded cache of loaded items; see the module docstring."""

    def __init__(
        self,
        load: Callable[[str], T],
        *,
        max_models: int = 0,
        max_memory_bytes: int = 0,
        policy: Literal["lru", "lfu"] = "lru",
        name: str = "registry",
    ) -> None:
        self._load = load
        self.max_models = max_models
        self.max_memory_bytes = max_memory_bytes
        self.policy = policy
        self.name = name
        self._entries: dict[str, Entry[T]] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _load_entry(self, key: str, *, force: bool) -> tuple[Entry[T], bool]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not force:
                return entry, False
            load_lock = self._load_locks.setdefault(key, threading.Lock())

        with load_lock:
            with self._lock:
                entry = self._entries.get(key)
            if entry is not None and not force:
                return entry, False
            try:
                started = time.perf_counter()
                item = self._load(key)
                entry = Entry(item=item, load_ms=(time.perf_counter() - started) * 1000)
                with self._lock:
                    self._entries.pop(key, None)
                    self._make_room(key, item.memory_bytes)
                    self._entries[key] = entry
                return entry, True
            finally:
                with self._lock:
                    self._load_locks.pop(key, None)

    def _make_room(self, key: str, memory_bytes: int) -> None:
        """Evict idle entries until one more item of memory_bytes fits; call with the lock held."""

        def over() -> bool:
            count = len(self._entries) + 1
            memory = sum(e.item.memory_bytes for e in self._entries.values()) + memory_bytes
            too_many = self.max_models and count > self.max_models
            too_big = self.max_memory_bytes and memory > self.max_memory_bytes
            return bool(too_many or too_big)

        while over():
            idle = [(k, e) for k, e in self._entries.items() if e.active_users == 0]
            if not idle:
                used = sum(e.item.memory_bytes for e in self._entries.values())
                raise ResourceExhausted(
                    f"cannot load avatar {key!r} ({memory_bytes / 1e6:.1f} MB): "
                    f"{len(self._entries)} avatars using {used / 1e6:.1f} MB are all in use; "
                    f"limits are max_models={self.max_models or 'unlimited'} and "
                    f"max_memory_bytes={self.max_memory_bytes or 'unlimited'}"
                )
            if self.policy == "lfu":
                victim, _ = min(idle, key=lambda kv: (kv[1].usage_count, kv[1].last_used_monotonic))
            else:
                victim, _ = min(idle, key=lambda kv: kv[1].last_used_monotonic)
            del self._entries[victim]
            logger.info(
                "%s: evicted avatar %s (%s) to load %s", self.name, victim, self.policy, key
            )

    def load(self, key: str, *, force: bool = False) -> tuple[T, float]:
        """Load key (again when force) and return it with the load time (0 if already loaded)."""
        entry, loaded_now = self._load_entry(key, force=force)
        return entry.item, entry.load_ms if loaded_now else 0.0

    @contextmanager
    def acquire(self, key: str) -> Iterator[tuple[T, float]]:
        """Use key for the duration of the block: it cannot be evicted meanwhile.

        Yields the item and the milliseconds spent loading it for this use (0 if cached).
        """
        while True:
            entry, loaded_now = self._load_entry(key, force=False)
            with self._lock:
                # An eviction between the load and here would leave a stale entry: load again.
                if self._entries.get(key) is entry:
                    entry.active_users += 1
                    entry.usage_count += 1
                    break
        try:
            yield entry.item, entry.load_ms if loaded_now else 0.0
        finally:
            with self._lock:
                entry.active_users -= 1
                entry.last_used_unix_ms = int(time.time() * 1000)
                entry.last_used_monotonic = time.monotonic()

    def record_inference(self, key: str, milliseconds: float) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.total_inference_time_ms += milliseconds

    def unload(self, key: str) -> bool:
        """Remove key and return whether it was loaded; its current users keep it until release."""
        with self._lock:
            entry = self._entries.pop(key, None)
        if entry is not None:
            logger.info(
                "%s: unloaded avatar %s (%d users still finishing)",
                self.name,
                key,
                entry.active_users,
            )
        return entry is not None

    def unload_idle(self, idle_s: float) -> list[str]:
        """Unload the entries unused for idle_s seconds or more; return their keys."""
        now = time.monotonic()
        with self._lock:
            keys = [
                k
                for k, e in self._entries.items()
                if e.active_users == 0 and now - e.last_used_monotonic >= idle_s
            ]
            for key in keys:
                del self._entries[key]
        for key in keys:
            logger.info("%s: unloaded avatar %s after %.0f s idle", self.name, key, idle_s)
        return keys

    def get(self, key: str) -> Entry[T] | None:
        with self._lock:
            return self._entries.get(key)

    def entries(self) -> dict[str, Entry[T]]:
        with self._lock:
            return dict(self._entries)

    def total_memory_bytes(self) -> int:
        with self._lock:
            return sum(e.item.memory_bytes for e in self._entries.values())


class IdleUnloader:
    """Background thread that unloads registry entries unused for idle_s seconds."""

    def __init__(self, registry: ModelRegistry, idle_s: float) -> None:
        self.registry = registry
        self.idle_s = idle_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-unload", daemon=True)

    def start(self) -> IdleUnloader:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = min(max(self.idle_s / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            self.registry.unload_idle(self.idle_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
