"""gateway/gctune.py: start-up objects frozen, collections spaced out, nothing a reload drops kept forever."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from tokenfuse.gateway import gctune


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.fixture
def restored() -> Iterator[None]:
    """gc state is process-wide: put the test process back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    gctune._enabled = False


def test_enable_freezes_start_up_objects_and_raises_the_young_threshold(restored: None) -> None:
    before = gc.get_freeze_count()
    gctune.enable()
    assert gc.get_freeze_count() > before
    assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, *gctune.OLDER_THRESHOLDS)


def test_a_cycle_frozen_at_start_up_is_freed_after_a_reload_drops_it(restored: None) -> None:
    old_config = _Node()
    ref = weakref.ref(old_config)
    gctune.enable()  # the cycle is now in the permanent generation
    del old_config
    gc.collect()
    assert ref() is not None, "a frozen object is never collected"
    gctune.after_reload()  # what Gateway.reload calls once the new config is in
    assert ref() is None
    assert gc.get_freeze_count() > 0  # the new set is frozen again


def test_after_reload_does_nothing_unless_serve_enabled_it(restored: None) -> None:
    gc.unfreeze()
    gctune.after_reload()
    assert gc.get_freeze_count() == 0
