"""The process's heap, made cheap for the garbage collector to walk.

CPython's full collection walks every object that can hold references, however old: in a
server that has imported FastAPI, pydantic, the Docker SDK and the rest, each took 50 to
80 ms, and a submit of 20,000 files (that many objects made, then dropped) set off one or
two of them, the event loop standing still meanwhile. What exists once a command has imported its
modules and built its app lives until the process ends: `freeze_startup_objects` (called
by `ci-server` and `ci-worker` before they serve) moves it out of the collector's sight
(gc.freeze), so a full collection walks only what was made since.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what starting left over, then keep every object alive now out of later
    collections (they are never freed; nothing of startup is meant to be)."""
    gc.collect()
    gc.freeze()
