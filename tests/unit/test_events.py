"""EventHub: numbering, live delivery to watchers, batched writes, replay from the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from ci_server.events import BATCH_CHARS, REPLAY_READS, EventHub, JobChannel, weight
from ci_server.models import EventType, Job, JobEvent, JobStatus
from ci_server.runner.output import LOG_EVENT_CHARS
from ci_server.store.memory import MemoryStore
from tests.fakes import wait_until

JOB = "0123456789ab"
NEVER = 3600.0  # a flush interval that never elapses: the test flushes by hand


class CountingStore(MemoryStore):
    """Counts writes and replays; can fail the next few writes and hold replays at a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.replays = 0
        self.failing_writes = 0
        self.replay_gate: asyncio.Event | None = None
        self.replay_waiting = False

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        if self.failing_writes:
            self.failing_writes -= 1
            raise OSError("disk full")
        self.batches.append(len(events))
        await super().append_events(events)

    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        self.replays += 1
        if self.replay_gate is not None:
            self.replay_waiting = True
            await self.replay_gate.wait()
        return await super().events_after(job_id, after_seq, limit=limit)


def log(channel: JobChannel, count: int = 1) -> list[JobEvent]:
    return [
        channel.publish(EventType.LOG, stream="stdout", text=f"line {channel.last_seq + 1}")
        for _ in range(count)
    ]


def end(channel: JobChannel) -> JobEvent:
    return channel.publish(EventType.END, status="succeeded", exit_code=0, success=True)


async def next_event(stream: AsyncIterator[JobEvent]) -> JobEvent:
    async with asyncio.timeout(10):
        return await anext(stream)


async def rest(stream: AsyncIterator[JobEvent]) -> list[JobEvent]:
    """The remaining events of a stream, which must end by itself (after END) in time."""
    async with asyncio.timeout(10):
        return [event async for event in stream]


def seqs(events: Sequence[JobEvent]) -> list[int]:
    return [event.seq for event in events]


async def test_events_are_numbered_from_one_and_stored_on_close() -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        published = [channel.publish(EventType.STATUS, status="running"), *log(channel, 4)]
        published.append(end(channel))
        assert seqs(published) == [1, 2, 3, 4, 5, 6]
        assert await hub.last_seq(JOB) == 6  # known to the hub...
        assert await store.last_event_seq(JOB) == 0  # ...but not written yet

        await channel.close()
        assert await store.events_after(JOB) == published
        assert await hub.last_seq(JOB) == 6  # now from the store


async def test_reopened_job_continues_its_numbering() -> None:
    async with EventHub(MemoryStore(), flush_interval=NEVER) as hub:
        channel = hub.open(JOB, last_seq=7)
        assert seqs(log(channel, 2)) == [8, 9]
        assert hub.open(JOB) is channel  # opening again does not restart it
        assert seqs(log(channel)) == [10]


async def test_leaving_the_hub_writes_pending_events() -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        published = log(hub.open(JOB), 3)
    assert await store.events_after(JOB) == published


@pytest.mark.parametrize("flush_while_watching", [False, True])
async def test_watcher_joining_mid_job_gets_every_event_once(flush_while_watching: bool) -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        log(channel, 3)
        await hub.flush()  # 1-3 are in the store
        log(channel, 2)  # 4-5 are pending
        assert await store.last_event_seq(JOB) == 3

        stream = hub.stream(JOB)
        received = [await next_event(stream)]  # subscribed now
        log(channel, 3)  # 6-8 come live
        if flush_while_watching:
            await hub.flush()  # 4-8 move to the store while the watcher is replaying
        received.append(await next_event(stream))
        log(channel, 1)
        end(channel)
        log(channel, 1)  # a stray event after END: never delivered
        received += await rest(stream)
        await channel.close()

    assert seqs(received) == list(range(1, 11))
    assert received[-1].type is EventType.END
    assert received == (await store.events_after(JOB))[:10]


async def test_events_written_during_a_slow_replay_are_not_repeated() -> None:
    """Events published after the watcher subscribed reach it live, and may also be in the
    store by the time its replay reads it: it must yield each of them once."""
    store = CountingStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        log(channel, 3)
        await hub.flush()
        log(channel, 2)
        store.replay_gate = asyncio.Event()
        stream = hub.stream(JOB)
        first = asyncio.ensure_future(next_event(stream))
        await wait_until(lambda: store.replay_waiting, what="the replay to start", within=5)
        log(channel, 3)  # 6-8: pushed to the watcher's queue...
        await hub.flush()  # ...and written, before its replay reads the store
        store.replay_gate.set()
        received = [await first]
        end(channel)
        received += await rest(stream)
        await channel.close()
    assert seqs(received) == list(range(1, 10))


async def test_many_watchers_replay_a_few_pages_at_a_time() -> None:
    """A replay page may hold 16 MiB: the store, which the health check asks too, never has
    more than REPLAY_READS of them to read at once, however many watchers replay."""
    store = CountingStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        published = [*log(channel, 3), end(channel)]
        await channel.close()
        store.replay_gate = asyncio.Event()
        watchers = [asyncio.ensure_future(rest(hub.stream(JOB))) for _ in range(10)]
        await wait_until(lambda: store.replays == REPLAY_READS, what="replays", within=5)
        for _ in range(20):
            await asyncio.sleep(0)  # turns for the other watchers to start theirs, if they could
        assert store.replays == REPLAY_READS
        store.replay_gate.set()
        assert [await watcher for watcher in watchers] == [published] * 10


async def test_resuming_after_a_seq_yields_exactly_the_rest() -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        log(channel, 6)
        await hub.flush()
        log(channel, 2)  # 7-8 pending

        from_store = hub.stream(JOB, after_seq=4)
        from_pending = hub.stream(JOB, after_seq=7)
        at_the_end = hub.stream(JOB, after_seq=8)
        first = [await next_event(from_store)]
        second = [await next_event(from_pending)]
        log(channel, 1)
        end(channel)
        await channel.close()

        assert seqs(first + await rest(from_store)) == [5, 6, 7, 8, 9, 10]
        assert seqs(second + await rest(from_pending)) == [8, 9, 10]
        assert seqs(await rest(at_the_end)) == [9, 10]


async def test_finished_job_replays_from_the_store() -> None:
    store = CountingStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        published = [*log(channel, 5), end(channel)]
        await channel.close()
        assert await rest(hub.stream(JOB)) == published

    # A new hub (a restarted server) knows the job only through the store.
    async with EventHub(store, flush_interval=NEVER) as restarted:
        replays = store.replays
        assert await rest(restarted.stream(JOB)) == published
        assert await rest(restarted.stream(JOB, after_seq=3)) == published[3:]
        assert await rest(restarted.stream(JOB, after_seq=6)) == []
        assert store.replays > replays
        assert await restarted.last_seq(JOB) == 6


async def test_stream_of_an_unknown_job_is_empty() -> None:
    async with EventHub(MemoryStore(), flush_interval=NEVER) as hub:
        assert await rest(hub.stream(JOB)) == []


async def test_slow_watcher_with_a_tiny_queue_misses_nothing() -> None:
    store = CountingStore()
    async with EventHub(store, flush_interval=NEVER, watcher_queue_size=2) as hub:
        channel = hub.open(JOB)
        log(channel)
        stream = hub.stream(JOB)
        received = [await next_event(stream)]
        # Each round publishes more than the watcher's queue holds, before it reads.
        for round_number in range(10):
            log(channel, 7)
            if round_number % 3 == 0:
                await hub.flush()
            received += [await next_event(stream) for _ in range(3)]
        end(channel)
        received += await rest(stream)
        await channel.close()

    assert seqs(received) == list(range(1, 73))
    assert received[-1].type is EventType.END
    assert store.replays > 1  # the overflow sent the watcher back to the store


async def test_watcher_that_reads_nothing_until_the_end_misses_nothing() -> None:
    async with EventHub(MemoryStore(), flush_interval=NEVER, watcher_queue_size=2) as hub:
        channel = hub.open(JOB)
        stream = hub.stream(JOB)
        log(channel)
        received = [await next_event(stream)]
        log(channel, 1000)
        end(channel)
        await channel.close()
        received += await rest(stream)
    assert seqs(received) == list(range(1, 1003))


async def test_events_are_written_in_batches() -> None:
    store = CountingStore()
    async with EventHub(store, flush_interval=0.5, batch_size=1000) as hub:
        channel = hub.open(JOB)
        for _ in range(50):
            log(channel, 100)
            await asyncio.sleep(0)  # a producer that lets the loop run: 50 chances to write
        end(channel)
        await channel.close()

    assert seqs(await store.events_after(JOB)) == list(range(1, 5002))
    assert sum(store.batches) == 5001
    assert len(store.batches) <= 25, store.batches


async def test_a_full_batch_is_written_before_the_interval() -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER, batch_size=100) as hub:
        channel = hub.open(JOB)
        log(channel, 250)

        async def stored() -> bool:
            return await store.last_event_seq(JOB) >= 200

        await wait_until(stored, what="the full batches written", within=5)


async def test_failed_write_is_retried_without_loss_or_duplicate() -> None:
    store = CountingStore()
    store.failing_writes = 2
    async with EventHub(store, flush_interval=0.01) as hub:
        channel = hub.open(JOB)
        published = log(channel, 10)
        watched = hub.stream(JOB)
        first = await next_event(watched)  # watchers are served even while the store fails

        async def stored() -> bool:
            return await store.last_event_seq(JOB) == 10

        await wait_until(stored, what="the events written after the failures", within=5)
        assert store.failing_writes == 0
        assert await store.events_after(JOB) == published
        end(channel)
        await channel.close()
        assert [first, *await rest(watched)] == [*published, *(await store.events_after(JOB))[10:]]


async def test_a_watcher_gets_what_waits_for_it_in_one_batch() -> None:
    """Stored events in one batch, pending ones in the next, and whatever queued up while
    the watcher was busy in one more: one write each, not one per event."""
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        log(channel, 5)
        await hub.flush()
        log(channel, 2)
        batches = hub.batches(JOB)
        async with asyncio.timeout(10):
            assert seqs(await anext(batches)) == [1, 2, 3, 4, 5]
            assert seqs(await anext(batches)) == [6, 7]
            log(channel, 3)  # while the watcher is away
            end(channel)
            log(channel, 1)  # a stray event after END: never delivered
            assert seqs(await anext(batches)) == [8, 9, 10, 11]
            assert [batch async for batch in batches] == []
        await channel.close()


def big_log(channel: JobChannel, count: int) -> list[JobEvent]:
    """Events as a flood makes them: 16 KiB of lines each."""
    return [
        channel.publish(EventType.LOG, stream="stdout", text="x" * LOG_EVENT_CHARS)
        for _ in range(count)
    ]


@pytest.mark.parametrize("stored", [False, True])
async def test_a_batch_holds_about_a_mebibyte_of_text_however_big_its_events(
    stored: bool,
) -> None:
    """Each batch is encoded in one go on the event loop: 1000 events of 16 KiB were 16 MB."""
    async with EventHub(MemoryStore(), flush_interval=NEVER) as hub:
        channel = hub.open(JOB)
        big_log(channel, 200)  # 3.2 MB
        if stored:
            await hub.flush()
        end(channel)
        async with asyncio.timeout(10):
            batches = [batch async for batch in hub.batches(JOB)]
        await channel.close()
    assert [event.seq for batch in batches for event in batch] == list(range(1, 202))
    assert all(sum(weight(event) for event in batch) <= BATCH_CHARS for batch in batches)
    assert len(batches) <= 5  # still a few writes, not one per event


async def test_a_mebibyte_of_pending_text_is_written_before_the_interval() -> None:
    store = MemoryStore()
    async with EventHub(store, flush_interval=NEVER, batch_size=10_000) as hub:
        channel = hub.open(JOB)
        big_log(channel, 100)  # 100 events, far from batch_size, but 1.6 MB

        async def stored() -> bool:
            return await store.last_event_seq(JOB) >= 60

        await wait_until(stored, what="the pending text written", within=5)


# -- a job that another process runs ---------------------------------------------------------


class SilentStore(MemoryStore):
    """Sends no signal: as if every NOTIFY were lost (a dropped listening connection)."""

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        stop, self.signals = self.signals, type(self.signals)()
        try:
            await super().append_events(events)
        finally:
            self.signals = stop


async def running_job(store: MemoryStore) -> None:
    await store.add_job(Job(id=JOB))
    assert await store.claim_next_job("elsewhere") is not None


async def test_a_watcher_follows_a_job_another_process_runs_through_the_store() -> None:
    """Two hubs on one store: the worker's process publishes, the API's streams. Each of the
    worker's batches signals the store; the watcher reads exactly what is new."""
    store = CountingStore()
    await running_job(store)
    async with (
        EventHub(store, flush_interval=NEVER) as worker,
        EventHub(store, flush_interval=NEVER, poll_interval=NEVER) as api,
    ):
        channel = worker.open(JOB)
        first = log(channel, 3)
        await worker.flush()
        stream = api.stream(JOB)
        received = [await next_event(stream) for _ in range(3)]
        assert received == first

        later = log(channel, 2)
        await worker.flush()  # nothing reaches the other hub before it is stored
        received += [await next_event(stream), await next_event(stream)]
        published = [*first, *later, end(channel)]
        await channel.close()
        received += await rest(stream)
        assert received == published  # no gap, no duplicate, the same seqs

        # Another watcher resumes where a client left off, on the other hub.
        assert await rest(api.stream(JOB, after_seq=4)) == published[4:]


async def test_without_signals_a_watcher_still_follows_by_polling() -> None:
    store = SilentStore()
    await running_job(store)
    async with (
        EventHub(store, flush_interval=NEVER) as worker,
        EventHub(store, poll_interval=0.05) as api,
    ):
        channel = worker.open(JOB)
        stream = api.stream(JOB)
        published = log(channel, 2)
        await worker.flush()
        assert [await next_event(stream), await next_event(stream)] == published
        published.append(end(channel))
        await channel.close()
        assert await rest(stream) == published[2:]


async def test_a_watcher_moves_to_the_channel_when_this_process_takes_the_job() -> None:
    """One process: a watcher that came while the job waited gets its live events from the
    worker's channel, before they are written."""
    store = CountingStore()
    await store.add_job(Job(id=JOB))
    async with EventHub(store, flush_interval=NEVER, poll_interval=NEVER) as hub:
        stream = hub.stream(JOB)
        waiting = asyncio.ensure_future(next_event(stream))
        await wait_until(lambda: store.replays >= 1, what="the watcher reading the store")
        channel = hub.open(JOB)
        [first] = log(channel)
        assert await waiting == first
        assert store.batches == []  # live: nothing was written


async def test_a_channel_abandoned_sends_its_watchers_to_the_end_written_elsewhere() -> None:
    """The worker learns that another process ended its job (a lost worker's sweep): its
    watchers get the END the other process wrote."""
    store = CountingStore()
    await running_job(store)
    async with (
        EventHub(store, flush_interval=NEVER) as worker,
        EventHub(store, flush_interval=NEVER) as sweeper,
    ):
        channel = worker.open(JOB)
        [first] = log(channel)
        stream = worker.stream(JOB)
        assert await next_event(stream) == first
        await worker.flush()
        lost = (await store.get_job(JOB)).replace(
            status=JobStatus.ERROR, reason="worker elsewhere stopped responding"
        )
        await sweeper.end(lost)

        await channel.abandon()
        rest_of_it = await rest(stream)
        assert [e.type for e in rest_of_it] == [EventType.LOG, EventType.END]
        assert rest_of_it[0].data["text"] == "worker elsewhere stopped responding"
        assert seqs(rest_of_it) == [2, 3]
