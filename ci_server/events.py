"""Live job events: sequence numbers, push to watchers, batched writes to the store.

Every job that this process's worker runs has a channel here. Publishing an event gives it
the next sequence number, pushes it at once to every watcher's queue and leaves it pending
until the flusher writes pending events of all jobs to the store in one transaction (every
`flush_interval` seconds, or sooner once `batch_size` events wait). A watcher replays what the
store has, then the pending events, then what arrives live: by sequence number, with no gap
and no duplicate, in batches of whatever is at hand at once, up to BATCH_CHARS of text
(`batches`). A watcher too slow for its queue is dropped back to the replay path.

A job with no channel here runs in another process (or waits, or has ended): its watchers
read the store by sequence number each time the store signals that the job's events were
written (SignalKind.EVENTS: once per stored batch, from any process on PostgreSQL), and
every `poll_interval` seconds in case a signal was lost. When this process's worker takes
the job meanwhile, they move over to its channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from ci_server.metrics import Metrics
from ci_server.models import EventType, Job, JobEvent, JobNotFound
from ci_server.store.repository import JobStore
from ci_server.store.signals import Signal, SignalKind

logger = logging.getLogger(__name__)

REPLAY_PAGE = 1000
REPLAY_READS = 2
"""Replay pages read from the store at once, whatever the number of watchers: a page may
hold 16 MiB of log, and the store answers one query at a time (SQLite) or from a small
pool (PostgreSQL), so 150 watchers replaying a long log queued every other query (the
/health check's among them) behind seconds of page reads."""
BATCH_SIZE = 1000
"""Most live events a watcher takes from its queue at once."""
BATCH_CHARS = 1024 * 1024
"""About the most text a watcher gets in one batch, and that waits to be written before
the flusher is woken: each batch is encoded (JSON, SSE) in one go on the event loop, and a
log event may carry 16 KiB of lines, so counting events alone let one batch grow to 16 MB."""
EVENT_CHARS = 100
"""What an event weighs besides its text: its JSON fields and SSE framing, roughly."""


def weight(event: JobEvent) -> int:
    """About how many characters the event takes once encoded."""
    text = event.data.get("text")
    return EVENT_CHARS + (len(text) if isinstance(text, str) else 0)


class _Overflow(Exception):
    """A watcher fell so far behind that its queue is full; it must replay from the store."""


def end_event_data(job: Job) -> dict[str, Any]:
    """What the END event of a finished job says."""
    return {
        "status": job.status.value,
        "exit_code": job.exit_code,
        "success": job.success,
        "reason": job.reason,
        "duration_seconds": job.duration_seconds,
        "summary": None if job.summary is None else dataclasses.asdict(job.summary),
    }


class _Watcher:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[JobEvent | None] = asyncio.Queue(maxsize)
        """Live events; None: the channel is gone, read the store."""
        self.overflowed = False
        self.stored = asyncio.Event()
        """Set when the store says the job has new events (a job without a channel here)."""

    def push(self, event: JobEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def detach(self) -> None:
        """The channel closed without an END: go back to the store."""
        self.overflowed = True
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def next_batch(self, limit: int) -> list[JobEvent]:
        """The next event (waiting for it), and up to `limit` - 1 more already queued."""
        if self.overflowed and self.queue.empty():
            raise _Overflow
        first = await self.queue.get()
        if first is None:
            raise _Overflow
        batch = [first]
        while len(batch) < limit and not self.queue.empty():
            event = self.queue.get_nowait()
            if event is None:
                break
            batch.append(event)
        return batch

    async def wait_for_store(self, at_most: float) -> None:
        """Until the store signals new events of the job, or `at_most` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self.stored.wait()
        self.stored.clear()


class JobChannel:
    """The live side of one job: where its worker publishes events."""

    def __init__(self, hub: EventHub, job_id: str, last_seq: int) -> None:
        self.hub = hub
        self.job_id = job_id
        self._last_seq = last_seq
        self.pending: list[JobEvent] = []
        self.watchers: set[_Watcher] = set()

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def publish(self, type: EventType, **data: Any) -> JobEvent:
        self._last_seq += 1
        event = JobEvent(job_id=self.job_id, seq=self._last_seq, type=type, data=data)
        self.pending.append(event)
        for watcher in self.watchers:
            watcher.push(event)
        self.hub.note_pending(event)
        self.hub.metrics.event_published(type)
        return event

    async def close(self) -> None:
        """Write what is pending and forget the channel (after the job's END event)."""
        await self.hub.flush()
        self.hub.forget(self.job_id)

    async def abandon(self) -> None:
        """Write what is pending and forget the channel without an END: another process
        ended the job (and wrote its END); the watchers go back to the store for it."""
        await self.close()
        for watcher in self.watchers:
            watcher.detach()


class EventHub:
    def __init__(
        self,
        store: JobStore,
        *,
        flush_interval: float = 0.2,
        batch_size: int = 2000,
        watcher_queue_size: int = 10_000,
        poll_interval: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        """Counts the events published here, and the jobs ended here (`end`)."""
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.watcher_queue_size = watcher_queue_size
        self.poll_interval = poll_interval
        """How often a watcher of a job without a channel here reads the store unasked."""
        self._channels: dict[str, JobChannel] = {}
        self._readers: dict[str, set[_Watcher]] = {}
        """The watchers of jobs without a channel here, woken by the store's signals."""
        self._stop_listening: Callable[[], None] | None = None
        self._pending_count = 0
        self._pending_chars = 0
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._replay_reads = asyncio.Semaphore(REPLAY_READS)
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventHub:
        self._stop_listening = await self.store.listen(SignalKind.EVENTS, self._on_stored)
        self._flusher = asyncio.create_task(self._flush_forever(), name="event-flusher")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stop_listening is not None:
            self._stop_listening()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    def open(self, job_id: str, last_seq: int = 0) -> JobChannel:
        """The job's channel, new from `last_seq` unless it has one; its watchers that read
        the store move over to it."""
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = JobChannel(self, job_id, last_seq)
            self._wake_readers(job_id)
        return channel

    async def end(self, job: Job, *, say_reason: bool = True) -> None:
        """Publish the end of `job` (terminal, as stored): its reason as a log line if
        `say_reason`, then END; through its channel, or after its stored events when this
        process has none (a job cancelled while queued, a lost worker's)."""
        channel = self._channels.get(job.id)
        if channel is None:
            channel = self.open(job.id, await self.store.last_event_seq(job.id))
        if say_reason and job.reason:
            channel.publish(EventType.LOG, stream="system", text=job.reason)
        channel.publish(EventType.END, **end_event_data(job))
        self.metrics.job_ended(job)
        await channel.close()

    def _on_stored(self, signal: Signal) -> None:
        self._wake_readers(signal.job_id)

    def _wake_readers(self, job_id: str) -> None:
        for watcher in self._readers.get(job_id, ()):
            watcher.stored.set()

    async def last_seq(self, job_id: str) -> int:
        """The sequence number of the job's newest event, published or stored."""
        channel = self._channels.get(job_id)
        if channel is not None:
            return channel.last_seq
        return await self.store.last_event_seq(job_id)

    def forget(self, job_id: str) -> None:
        self._channels.pop(job_id, None)

    def note_pending(self, event: JobEvent) -> None:
        self._pending_count += 1
        self._pending_chars += weight(event)
        if self._pending_count >= self.batch_size or self._pending_chars >= BATCH_CHARS:
            self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Exception:
                # The events stay pending and are written on the next round.
                logger.exception("writing job events to the store failed")

    async def flush(self) -> None:
        # Shielded: a store may finish a write after its caller is cancelled (aiosqlite's
        # thread does), so the bookkeeping must finish too, or the batch stays pending and
        # is written twice (the flusher is cancelled at shutdown, workers at stop).
        await asyncio.shield(self._flush())

    async def _flush(self) -> None:
        async with self._flush_lock:
            batch: list[tuple[JobChannel, int]] = []
            events: list[JobEvent] = []
            for channel in self._channels.values():
                if channel.pending:
                    batch.append((channel, len(channel.pending)))
                    events.extend(channel.pending)
            if not events:
                return
            await self.store.append_events(events)
            for channel, count in batch:
                # Only now may watchers find these events in the store instead.
                del channel.pending[:count]
            self._pending_count = max(0, self._pending_count - len(events))
            self._pending_chars = max(0, self._pending_chars - sum(map(weight, events)))

    async def stream(self, job_id: str, after_seq: int = 0) -> AsyncIterator[JobEvent]:
        """Every event of the job after `after_seq`, live, until and including its END."""
        async with contextlib.aclosing(self.batches(job_id, after_seq)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def batches(
        self, job_id: str, after_seq: int = 0
    ) -> AsyncGenerator[list[JobEvent], None]:
        """The events of `stream`, in lists of what is at hand at once (a replay page, the
        pending events, what waits in the watcher's queue) up to BATCH_CHARS, so that a
        watcher falling behind catches up with one write per list instead of one per event."""
        async with contextlib.aclosing(self._batches(job_id, after_seq)) as batches:
            async for batch in batches:
                for part in _up_to_chars(batch, BATCH_CHARS):
                    yield part
                    # Nothing below need ever suspend: a replay page, the pending copy and
                    # a non-empty queue are at hand, and a socket that a client drains
                    # never blocks a send. Without this pause one watcher catching up on a
                    # flood holds the event loop for seconds: the job's output, the flusher
                    # and every other request wait behind it.
                    await asyncio.sleep(0)

    async def _batches(self, job_id: str, after_seq: int) -> AsyncGenerator[list[JobEvent], None]:
        last = after_seq
        while True:
            channel = self._channels.get(job_id)
            watcher = _Watcher(self.watcher_queue_size)
            # Subscribing and copying the pending events happen with no await in between, so
            # each event is in the store, in the copy, or still to come through the queue.
            # Without a channel, the watcher listens before it reads the store: a signal
            # that comes during the read makes it read again.
            pending = list(channel.pending) if channel else []
            if channel is not None:
                channel.watchers.add(watcher)
            else:
                self._readers.setdefault(job_id, set()).add(watcher)
            try:
                before = last
                while True:
                    async with self._replay_reads:
                        page = await self.store.events_after(job_id, last, limit=REPLAY_PAGE)
                    batch, ended = _newer(page, last)
                    if batch:
                        yield batch
                        last = batch[-1].seq
                    if ended:
                        return
                    if len(page) < REPLAY_PAGE:
                        break
                if channel is None:
                    if last == before and await self._ended_before(job_id, last):
                        return
                    await watcher.wait_for_store(self.poll_interval)
                    continue
                batch, ended = _newer(pending, last)
                if batch:
                    yield batch
                    last = batch[-1].seq
                if ended:
                    return
                while True:
                    batch, ended = _newer(await watcher.next_batch(BATCH_SIZE), last)
                    if batch:
                        yield batch
                        last = batch[-1].seq
                    if ended:
                        return
            except _Overflow:
                continue
            finally:
                if channel is not None:
                    channel.watchers.discard(watcher)
                else:
                    readers = self._readers.get(job_id, set())
                    readers.discard(watcher)
                    if not readers:
                        self._readers.pop(job_id, None)

    async def _ended_before(self, job_id: str, seq: int) -> bool:
        """Whether nothing will come after `seq`: the job is unknown, or its END is stored
        at or before `seq` (a job may be finished a moment before its END is written)."""
        try:
            job = await self.store.get_job(job_id)
        except JobNotFound:
            return True
        if not job.status.is_terminal:
            return False
        stored = await self.store.last_event_seq(job_id)
        if stored > seq:
            return False
        tail = await self.store.events_after(job_id, max(0, stored - 1))
        return not tail or tail[-1].type is EventType.END


def _up_to_chars(events: list[JobEvent], limit: int) -> list[list[JobEvent]]:
    """The events in consecutive slices of about `limit` characters (at least one event)."""
    if not events:
        return []
    slices: list[list[JobEvent]] = []
    start, size = 0, 0
    for n, event in enumerate(events):
        if n > start and size + weight(event) > limit:
            slices.append(events[start:n])
            start, size = n, 0
        size += weight(event)
    slices.append(events[start:])
    return slices


def _newer(events: list[JobEvent], last: int) -> tuple[list[JobEvent], bool]:
    """The events after seq `last` up to the job's END; and whether END was among them."""
    batch: list[JobEvent] = []
    for event in events:
        if event.seq <= last:
            continue
        batch.append(event)
        last = event.seq
        if event.type is EventType.END:
            return batch, True
    return batch, False
