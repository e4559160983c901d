"""controller/heap.py: what survives a collection is frozen; cyclic garbage is still freed."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from gpuadmit.controller.heap import HeapKeeper


class Cyclic:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture()
def keeper() -> Iterator[HeapKeeper]:
    keeper = HeapKeeper()
    keeper.install()
    try:
        yield keeper
    finally:
        keeper.uninstall()
    assert gc.get_freeze_count() == 0 and keeper._on_collection not in gc.callbacks  # the process as it was


async def test_what_survives_a_collection_is_frozen(keeper: HeapKeeper) -> None:
    assert keeper.installed and keeper.full_scans == 1 and gc.get_freeze_count() > 0  # the heap at install
    frozen_before = gc.get_freeze_count()
    kept = [{"metadata": {"name": f"w{i}", "labels": {"a": str(i)}}} for i in range(1000)]
    gc.collect(0)  # a young collection
    assert gc.get_freeze_count() >= frozen_before + len(kept)


async def test_young_cyclic_garbage_is_freed_and_frozen_cyclic_garbage_by_the_next_full_scan(keeper: HeapKeeper) -> None:
    young = Cyclic()
    gone = weakref.ref(young)
    del young
    gc.collect(0)
    assert gone() is None  # garbage when the young collection ran: freed, not frozen

    kept = Cyclic()
    later = weakref.ref(kept)
    gc.collect(0)  # alive: frozen
    del kept
    gc.collect()
    assert later() is not None  # frozen: no collection sees it ...
    keeper.full_scan()
    assert later() is None and keeper.full_scans == 2  # ... until the full scan


async def test_a_keeper_not_installed_leaves_the_collector_alone() -> None:
    keeper = HeapKeeper()
    keeper.full_scan()
    assert keeper.full_scans == 0 and gc.get_freeze_count() == 0
