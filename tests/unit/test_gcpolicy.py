"""The collector policy of a serving process: young collections by count, survivors frozen,
a full collection on a clock."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from parley import gcpolicy


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.me = self


def test_after_start_older_generations_are_not_collected_by_count(restore_gc: None) -> None:
    gcpolicy.settle_after_start()
    young, middle, old = gc.get_threshold()
    assert young == gcpolicy.YOUNG_THRESHOLD
    assert middle >= 10**9 and old >= 10**9
    assert gc.get_freeze_count() > 0


def test_young_cycles_are_still_freed(restore_gc: None) -> None:
    gcpolicy.settle_after_start()
    ref = weakref.ref(Node())
    gc.collect(0)
    assert ref() is None


async def test_frozen_survivors_are_freed_by_the_full_collection(restore_gc: None) -> None:
    gcpolicy.settle_after_start()
    survivor = Node()
    freed: list[bool] = []
    ref = weakref.ref(survivor, lambda _r: freed.append(True))
    task = asyncio.get_running_loop().create_task(gcpolicy.collect_on_a_clock(freeze_every=0.01, full_every=0.2))
    try:
        await asyncio.sleep(0.05)  # frozen by now
        del survivor
        gc.collect()
        assert ref() is not None, "a frozen cycle is left to the full collection"
        for _ in range(100):
            if freed:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert freed == [True]
