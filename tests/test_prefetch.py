"""prefetch: order, errors, early stop and overlap of producer and consumer."""

from __future__ import annotations

import threading

import pytest

from lipsync.prefetch import prefetch


def test_items_arrive_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_reaches_the_consumer():
    def failing():
        yield 1
        raise ValueError("broken source")

    consumed = []
    with pytest.raises(ValueError, match="broken source"):
        for item in prefetch(failing()):
            consumed.append(item)
    assert consumed == [1]


def test_early_stop_closes_the_source():
    closed = threading.Event()
    produced = []

    def source():
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    iterator = prefetch(source(), depth=2)
    assert next(iterator) == 0
    iterator.close()
    assert closed.wait(5)
    assert len(produced) <= 5


def test_producer_runs_ahead_while_the_consumer_works():
    second_produced = threading.Event()

    def source():
        yield 1
        second_produced.set()
        yield 2

    iterator = prefetch(source(), depth=2)
    assert next(iterator) == 1
    # The consumer has not asked for item 2 yet, but the producer made it already.
    assert second_produced.wait(5)
    assert list(iterator) == [2]
