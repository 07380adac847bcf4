"""ModelRegistry: single-flight loads, capacity, eviction policies and users; GPU placement."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from inference_service.placement import GpuPlacement
from lipsync.errors import FailedPrecondition, ResourceExhausted
from lipsync.registry import IdleUnloader, ModelRegistry


@dataclass
class Item:
    name: str
    memory_bytes: int = 100


class CountingLoader:
    """Loads Items and counts calls; an optional event holds loads back until it is set."""

    def __init__(self, memory: dict[str, int] | None = None, gate: threading.Event | None = None):
        self.calls: list[str] = []
        self.memory = memory or {}
        self.gate = gate
        self._lock = threading.Lock()

    def __call__(self, key: str) -> Item:
        with self._lock:
            self.calls.append(key)
        if self.gate is not None:
            self.gate.wait(10)
        return Item(key, self.memory.get(key, 100))


def test_concurrent_first_uses_share_one_load():
    gate = threading.Event()
    loader = CountingLoader(gate=gate)
    registry = ModelRegistry(loader)
    results = []

    def use():
        with registry.acquire("a") as (item, _):
            results.append(item)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)  # let every thread reach the load lock before the load finishes
    gate.set()
    for thread in threads:
        thread.join(10)

    assert loader.calls == ["a"]
    assert len(results) == 8
    assert all(item is results[0] for item in results)
    assert registry.get("a").usage_count == 8
    assert registry.get("a").active_users == 0


def test_lru_evicts_least_recently_used():
    loader = CountingLoader()
    registry = ModelRegistry(loader, max_models=2, policy="lru")
    for key in ["a", "b", "a", "c"]:
        with registry.acquire(key):
            pass
    assert sorted(registry.entries()) == ["a", "c"]


def test_lfu_evicts_least_frequently_used():
    loader = CountingLoader()
    registry = ModelRegistry(loader, max_models=2, policy="lfu")
    for key in ["a", "a", "a", "b", "c"]:
        with registry.acquire(key):
            pass
    assert sorted(registry.entries()) == ["a", "c"]


def test_memory_limit_evicts_until_it_fits():
    loader = CountingLoader(memory={"a": 300, "b": 300, "c": 500})
    registry = ModelRegistry(loader, max_memory_bytes=1000)
    for key in ["a", "b", "c"]:
        registry.load(key)
    assert sorted(registry.entries()) == ["b", "c"]
    assert registry.total_memory_bytes() == 800


def test_avatar_in_use_is_never_evicted():
    registry = ModelRegistry(CountingLoader(), max_models=1)
    with registry.acquire("a") as (item, _):
        with pytest.raises(ResourceExhausted) as caught:
            registry.load("b")
        assert registry.get("a").item is item
    message = str(caught.value)
    assert "'b'" in message
    assert "max_models=1" in message
    assert "in use" in message
    registry.load("b")
    assert sorted(registry.entries()) == ["b"]


def test_load_that_cannot_fit_names_the_numbers():
    registry = ModelRegistry(CountingLoader(memory={"big": 5_000_000}), max_memory_bytes=1_000_000)
    with pytest.raises(ResourceExhausted, match=r"5\.0 MB.*max_memory_bytes=1000000"):
        registry.load("big")
    assert registry.entries() == {}


def test_unload_keeps_the_item_for_current_users():
    loader = CountingLoader()
    registry = ModelRegistry(loader)
    with registry.acquire("a") as (item, _):
        assert registry.unload("a")
        assert registry.get("a") is None
        assert item.name == "a"
    assert not registry.unload("a")
    with registry.acquire("a"):
        pass
    assert loader.calls == ["a", "a"]


def test_force_reload_loads_again():
    loader = CountingLoader()
    registry = ModelRegistry(loader)
    _, first_ms = registry.load("a")
    _, cached_ms = registry.load("a")
    registry.load("a", force=True)
    assert loader.calls == ["a", "a"]
    assert cached_ms == 0.0
    assert first_ms >= 0.0


def test_failed_load_is_not_cached():
    attempts = []

    def flaky(key: str) -> Item:
        attempts.append(key)
        if len(attempts) == 1:
            raise FailedPrecondition("broken package")
        return Item(key)

    registry = ModelRegistry(flaky)
    with pytest.raises(FailedPrecondition):
        registry.load("a")
    registry.load("a")
    assert attempts == ["a", "a"]


def test_idle_unloader_unloads_only_idle_entries():
    registry = ModelRegistry(CountingLoader())
    registry.load("idle")
    unloader = IdleUnloader(registry, idle_s=0.05).start()
    try:
        with registry.acquire("busy"):
            deadline = time.monotonic() + 5
            while registry.get("idle") is not None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert registry.get("idle") is None
            assert registry.get("busy") is not None
    finally:
        unloader.stop()


def test_round_robin_placement_cycles_devices():
    placement = GpuPlacement(
        count=3, policy="round-robin", preferred={"x": 2}, default_gpu=0, loaded_devices=lambda: []
    )
    assert [placement.choose(f"a{i}") for i in range(5)] == [0, 1, 2, 0, 1]
    assert placement.choose("x") == 2


def test_least_loaded_placement_counts_loaded_avatars():
    loaded = [0, 0, 1, 2, 2, 2]
    placement = GpuPlacement(
        count=3, policy="least-loaded", preferred={}, default_gpu=0, loaded_devices=lambda: loaded
    )
    assert placement.choose("a") == 1
    loaded.append(1)
    loaded.append(1)
    assert placement.choose("b") == 0


def test_preferred_gpu_outside_count_is_rejected():
    with pytest.raises(FailedPrecondition, match=r"gpus.preferred\['x'\] is 4"):
        GpuPlacement(
            count=2,
            policy="round-robin",
            preferred={"x": 4},
            default_gpu=0,
            loaded_devices=lambda: [],
        )


def test_single_device_without_count():
    placement = GpuPlacement(
        count=0, policy="round-robin", preferred={}, default_gpu=-1, loaded_devices=lambda: []
    )
    assert {placement.choose(f"a{i}") for i in range(4)} == {-1}
