"""A keyed cache that loads each entry once, even when many threads ask for it at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoadOnceCache(Generic[T]):
    """Map ids to loaded objects; concurrent first requests for one id share a single load."""

    def __init__(self, load: Callable[[str], T]) -> None:
        self._load = load
        self._items: dict[str, T] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> tuple[T, bool]:
        """Return the entry for key and whether this call loaded it."""
        with self._lock:
            if key in self._items:
                return self._items[key], False
            load_lock = self._load_locks.setdefault(key, threading.Lock())

        with load_lock:
            with self._lock:
                if key in self._items:
                    return self._items[key], False
            try:
                item = self._load(key)
                with self._lock:
                    self._items[key] = item
                return item, True
            finally:
                with self._lock:
                    self._load_locks.pop(key, None)

    def values(self) -> list[T]:
        with self._lock:
            return list(self._items.values())
