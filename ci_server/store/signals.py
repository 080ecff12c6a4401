"""What a store's writes signal to whoever listens: a job queued, events stored, a cancel.

A signal only says that something changed; listeners read the store to learn what. Every
store delivers its signals to the listeners of its own process at once; PostgreSQL also
carries them to other processes (NOTIFY on the writing connection, LISTEN on one connection
of its own per process). A listener may miss a signal (a dropped connection), so whoever
waits on one also polls, slowly.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)


class SignalKind(enum.StrEnum):
    QUEUED = "queued"
    """A job was queued: a worker may claim it."""
    EVENTS = "events"
    """A batch of a job's events was stored, up to `seq`."""
    CANCEL = "cancel"
    """Someone asked to cancel a running job: its worker should stop it."""

    @property
    def channel(self) -> str:
        """The PostgreSQL channel that carries this kind."""
        return f"ci_{self.value}"


@dataclass(frozen=True, slots=True)
class Signal:
    kind: SignalKind
    job_id: str
    seq: int = 0
    """For EVENTS: the highest seq of the batch."""

    @property
    def payload(self) -> str:
        """The NOTIFY payload: a few dozen bytes (PostgreSQL allows 8,000)."""
        return f"{self.job_id}:{self.seq}"

    @classmethod
    def parse(cls, kind: SignalKind, payload: str) -> Signal:
        job_id, _, seq = payload.partition(":")
        return cls(kind, job_id, int(seq or 0))


Listener = Callable[[Signal], None]
"""Called on the event loop, with nothing awaited in between: it must not block."""


class SignalBoard:
    """The listeners of one process, by kind."""

    def __init__(self) -> None:
        self._listeners: dict[SignalKind, list[Listener]] = {kind: [] for kind in SignalKind}

    def add(self, kind: SignalKind, listener: Listener) -> Callable[[], None]:
        """Start calling `listener`; the function returned stops it."""
        self._listeners[kind].append(listener)
        return lambda: self._discard(kind, listener)

    def _discard(self, kind: SignalKind, listener: Listener) -> None:
        if listener in self._listeners[kind]:
            self._listeners[kind].remove(listener)

    def emit(self, signal: Signal) -> None:
        for listener in list(self._listeners[signal.kind]):
            try:
                listener(signal)
            except Exception:
                logger.exception("a listener of %s signals failed", signal.kind)
