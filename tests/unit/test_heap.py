"""ci_server/heap.py: what exists when a command starts serving is out of the garbage
collector's sight; what is made later is collected as usual."""

from __future__ import annotations

import gc

from ci_server.heap import freeze_startup_objects


def _tracked(thing: object) -> bool:
    return any(candidate is thing for candidate in gc.get_objects())


def test_objects_alive_at_startup_are_frozen_and_later_ones_are_not() -> None:
    at_startup: list[object] = []
    freeze_startup_objects()
    try:
        later: list[object] = []
        assert gc.get_freeze_count() > 0
        assert not _tracked(at_startup)
        assert _tracked(later)
    finally:
        gc.unfreeze()
