"""The worker: claims from the store's queue under its concurrency, wakes on signals (or
polls), stops a job cancelled from any process, its timeout, graceful stop, restart; lost
workers' jobs ended by another process's sweep. In-memory store, FakeExecutor."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from ci_server.events import EventHub
from ci_server.models import EventType, Job, JobEvent, JobStatus
from ci_server.states import claim, transition
from ci_server.store.memory import MemoryStore
from ci_server.store.signals import SignalKind
from ci_server.users import ANONYMOUS_ADMIN
from ci_server.worker import loop
from ci_server.worker.loop import INTERRUPTED_REASON, Worker
from ci_server.worker.recovery import end_jobs_of_lost_workers
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun, wait_until, write_zip
from tests.unit.one_process import WORKER, blob_store, harness, settings_for
from tests.unit.test_pipeline import log_lines, statuses

ADMIN = ANONYMOUS_ADMIN


class DeafStore(MemoryStore):
    """Delivers no signal of the given kinds: as if every NOTIFY of them were lost."""

    def __init__(self, *deaf: SignalKind) -> None:
        super().__init__()
        self.deaf = set(deaf)
        emit = self.signals.emit
        self.signals.emit = lambda signal: None if signal.kind in self.deaf else emit(signal)


def gated() -> tuple[asyncio.Event, FakeExecutor]:
    gate = asyncio.Event()
    return gate, FakeExecutor(FakeRun(output=[b"started\n"], gate=gate))


# -- the queue -------------------------------------------------------------------------------


async def test_more_jobs_than_slots_wait_their_turn_in_order(tmp_path: Path) -> None:
    gate, executor = gated()
    async with harness(tmp_path, executor, max_concurrent_jobs=2) as h:
        ids = [(await h.submit()).id for _ in range(5)]
        await h.wait_running(ids[0], ids[1])

        views = await h.service.list(ADMIN)
        positions = {view.job.id: view.queue_position for view in views}
        assert positions == {ids[0]: None, ids[1]: None, ids[2]: 1, ids[3]: 2, ids[4]: 3}
        assert (await h.service.get(ADMIN, ids[4])).queue_position == 3

        gate.set()
        finished = [await h.finished(job_id) for job_id in ids]
        assert [job.status for job in finished] == [JobStatus.SUCCEEDED] * 5
        assert {job.worker for job in finished} == {WORKER}
        assert executor.max_running == 2
        assert {spec.job_id for spec in executor.specs[:2]} == set(ids[:2])  # oldest first
        assert sorted(spec.job_id for spec in executor.specs) == sorted(ids)
        assert [view.queue_position for view in await h.service.list(ADMIN)] == [None] * 5


async def test_a_queued_job_is_claimed_when_the_store_signals_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "QUEUE_POLL_SECONDS", 3600.0)  # only the signal can wake it
    async with harness(tmp_path) as h:
        job = await h.submit()
        assert (await h.finished(job.id)).status is JobStatus.SUCCEEDED


async def test_without_signals_a_free_worker_still_claims_by_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "QUEUE_POLL_SECONDS", 0.05)
    async with harness(tmp_path, store=DeafStore(SignalKind.QUEUED)) as h:
        await asyncio.sleep(0.1)  # the worker waits, unsignalled, for its next poll
        job = await h.submit()
        assert (await h.finished(job.id)).status is JobStatus.SUCCEEDED


async def test_two_workers_on_one_store_run_each_job_once(tmp_path: Path) -> None:
    """Two worker processes (a hub each) and an API process on one store."""
    store = MemoryStore()
    gate = asyncio.Event()
    executors = [FakeExecutor(FakeRun(gate=gate)) for _ in range(2)]
    async with contextlib.AsyncExitStack() as stack:
        for n, executor in enumerate(executors):
            settings = settings_for(tmp_path, worker_name=f"build-{n}", max_concurrent_jobs=2)
            hub = await stack.enter_async_context(EventHub(store, flush_interval=0.02))
            blobs = await stack.enter_async_context(blob_store(settings))
            await stack.enter_async_context(Worker(store, hub, executor, blobs, settings))
        async with harness(tmp_path, store=store, worker=False) as api:
            ids = [(await api.submit()).id for _ in range(12)]
            await wait_until(
                lambda: all(len(e.running) == 2 for e in executors), what="both workers full"
            )
            gate.set()
            finished = [await api.finished(job_id) for job_id in ids]

    assert [job.status for job in finished] == [JobStatus.SUCCEEDED] * 12
    ran = [spec.job_id for executor in executors for spec in executor.specs]
    assert sorted(ran) == sorted(ids)  # each exactly once
    for n, executor in enumerate(executors):
        assert executor.specs, f"build-{n} ran nothing"
        for spec in executor.specs:
            assert (await store.get_job(spec.job_id)).worker == f"build-{n}"


# -- cancel and timeout ----------------------------------------------------------------------


async def test_cancel_queued_job_never_runs_it(tmp_path: Path) -> None:
    gate, executor = gated()
    async with harness(tmp_path, executor) as h:
        first, second = await h.one_running_one_queued()

        cancelled = await h.service.cancel(ADMIN, second.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.reason == "cancelled by user"
        assert cancelled.started_at is None
        assert (await h.service.get(ADMIN, second.id)).queue_position is None
        events = await h.events_until_end(second.id)
        assert events[-1].data["status"] == "cancelled"
        assert statuses(events) == ["queued"]

        gate.set()
        assert (await h.finished(first.id)).status is JobStatus.SUCCEEDED
        assert [spec.job_id for spec in executor.specs] == [first.id]
        assert (await h.store.get_job(second.id)).status is JobStatus.CANCELLED
        await h.uploads_removed()


async def test_cancel_running_job_cancels_the_executor(tmp_path: Path) -> None:
    _, executor = gated()
    async with harness(tmp_path, executor) as h:
        job = await h.submit()
        await h.wait_running(job.id)

        cancelled = await h.service.cancel(ADMIN, job.id)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.reason == "cancelled by user"
        assert cancelled.finished_at is not None
        assert executor.cancelled == [job.id]
        assert executor.running == set()
        events = await h.events_until_end(job.id)
        assert "started" in log_lines(events)
        assert events[-1].data["status"] == "cancelled"
        await wait_until(
            lambda: not executor.specs[0].workspace.exists(), what="the workspace removed"
        )

        # The worker survived the cancellation and takes the next job.
        executor.plan = FakeRun()
        assert (await h.finished((await h.submit()).id)).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("signals", ["signalled", "lost"])
async def test_a_cancel_sent_by_another_process_stops_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signals: str
) -> None:
    """An API process without a worker cancels a job the worker process runs: the store
    carries the request (a signal, or the worker's poll when signals are lost)."""
    monkeypatch.setattr(loop, "CANCEL_POLL_SECONDS", 0.05)
    store = DeafStore(SignalKind.CANCEL) if signals == "lost" else MemoryStore()
    _, executor = gated()
    async with (
        harness(tmp_path, executor, store=store) as worker,
        harness(tmp_path, store=store, worker=False) as api,
    ):
        job = await api.submit()
        await worker.wait_running(job.id)
        cancelled = await api.service.cancel(ADMIN, job.id)
        assert (cancelled.status, cancelled.reason) == (JobStatus.CANCELLED, "cancelled by user")
        assert executor.cancelled == [job.id]
        events = await api.events_until_end(job.id)
        assert events[-1].data["status"] == "cancelled"


async def test_job_over_its_timeout_is_timed_out(tmp_path: Path) -> None:
    executor = FakeExecutor(FakeRun(output=[b"sleeping forever"], gate=asyncio.Event()))
    async with harness(tmp_path, executor) as h:
        submitted = await h.submit(timeout_seconds=0.2)
        events = await h.events_until_end(submitted.id)
        job = await h.store.get_job(submitted.id)
        assert job.status is JobStatus.TIMED_OUT
        assert job.success is False
        assert job.reason == "timed out after 0.2s"
        assert executor.cancelled == [submitted.id]
        # The unterminated last line is not lost, and the reason is in the log.
        assert "sleeping forever" in log_lines(events)
        assert "timed out after 0.2s" in log_lines(events, "system")


# -- stopping and starting again -------------------------------------------------------------


async def test_stop_lets_running_jobs_finish_within_the_grace_and_claims_no_more(
    tmp_path: Path,
) -> None:
    gate, executor = gated()
    store = MemoryStore()
    async with harness(tmp_path, executor, store=store, worker_grace=30) as h:
        running, queued = await h.one_running_one_queued()
        stopping = asyncio.create_task(h.worker.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # it waits for the running job
        gate.set()
        await stopping
        assert (await store.get_job(running.id)).status is JobStatus.SUCCEEDED
        assert (await store.get_job(queued.id)).status is JobStatus.QUEUED  # left for others
        [worker] = await store.list_workers()
        assert worker.stopped_at is not None


async def test_stop_ends_the_jobs_still_running_after_the_grace_in_error(tmp_path: Path) -> None:
    _, executor = gated()
    store = MemoryStore()
    async with harness(tmp_path, executor, store=store, worker_grace=0.1) as h:
        job = await h.submit()
        await h.wait_running(job.id)
    stopped = await store.get_job(job.id)
    assert stopped.status is JobStatus.ERROR
    assert stopped.reason == f"worker {WORKER} shut down"
    assert executor.cancelled == [job.id]
    events = await store.events_after(job.id)
    assert events[-1].type is EventType.END
    assert events[-2].data["text"] == f"worker {WORKER} shut down"


async def test_restart_ends_its_own_running_jobs_and_runs_the_queued_ones(tmp_path: Path) -> None:
    store = MemoryStore()
    interrupted = claim(Job(id="aaaaaaaaaaaa"), WORKER)
    legacy = transition(Job(id="cccccccccccc"), JobStatus.RUNNING)  # from before worker names
    elsewhere = claim(Job(id="dddddddddddd"), "build-7")  # another worker's: not this one's
    waiting = Job(id="bbbbbbbbbbbb")
    for job in (interrupted, legacy, elsewhere, waiting):
        await store.add_job(job)
    await store.register_worker("build-7", 1)
    await store.append_events(
        [
            JobEvent(interrupted.id, 1, EventType.STATUS, {"status": "queued"}),
            JobEvent(interrupted.id, 2, EventType.STATUS, {"status": "running"}),
            JobEvent(interrupted.id, 3, EventType.LOG, {"stream": "stdout", "text": "half"}),
            JobEvent(waiting.id, 1, EventType.STATUS, {"status": "queued"}),
        ]
    )
    async with blob_store(settings_for(tmp_path)) as blobs:
        await blobs.put(waiting.id, write_zip(tmp_path / "waiting.zip", PASSING_PROJECT))
    executor = FakeExecutor(orphans=1)

    async with harness(tmp_path, executor, store=store) as h:
        events = await h.events_until_end(interrupted.id)
        job = await store.get_job(interrupted.id)
        assert job.status is JobStatus.ERROR
        assert job.reason == INTERRUPTED_REASON
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[3].data == {"stream": "system", "text": INTERRUPTED_REASON}
        assert events[4].type is EventType.END
        assert events[4].data["status"] == "error"
        assert (await store.get_job(legacy.id)).reason == INTERRUPTED_REASON

        resumed = await h.events_until_end(waiting.id)
        assert (await store.get_job(waiting.id)).status is JobStatus.SUCCEEDED
        assert [e.seq for e in resumed] == list(range(1, len(resumed) + 1))
        assert statuses(resumed) == ["queued", "running"]

        assert executor.remove_orphans_calls == 1
        assert [spec.job_id for spec in executor.specs] == [waiting.id]
        assert (await store.get_job(elsewhere.id)).status is JobStatus.RUNNING


# -- lost workers ----------------------------------------------------------------------------


async def test_the_jobs_of_a_silent_worker_end_with_a_reason_naming_it(tmp_path: Path) -> None:
    """A worker process that stopped beating (killed, its host down): the sweep of another
    process ends its running job, that job's watchers get the end, and its upload goes."""
    store = MemoryStore()
    await store.register_worker("build-2", 1)
    await store.add_job(Job(id="aaaaaaaaaaaa"))
    await store.append_events([JobEvent("aaaaaaaaaaaa", 1, EventType.STATUS, {"status": "queued"})])
    await store.claim_next_job("build-2")
    async with blob_store(settings_for(tmp_path)) as blobs:
        await blobs.put("aaaaaaaaaaaa", write_zip(tmp_path / "lost.zip", PASSING_PROJECT))
    async with harness(tmp_path, store=store, worker_timeout=0.3) as h:
        watching = asyncio.ensure_future(h.events_until_end("aaaaaaaaaaaa"))
        job = await h.finished("aaaaaaaaaaaa")
        events = await watching
        await h.uploads_removed()
    assert (job.status, job.reason) == (JobStatus.ERROR, "worker build-2 stopped responding")
    assert [e.seq for e in events] == [1, 2, 3]
    assert events[1].data["text"] == "worker build-2 stopped responding"
    assert events[2].data["status"] == "error"


async def test_a_worker_that_was_thought_lost_leaves_the_end_written_for_it(
    tmp_path: Path,
) -> None:
    """Its job was ended by another process's sweep while it ran (it was too slow to beat):
    when the job's run returns, the worker leaves it as the sweep ended it."""
    gate, executor = gated()
    async with harness(tmp_path, executor) as h:
        job = await h.submit()
        await h.wait_running(job.id)
        await h.hub.flush()
        async with EventHub(h.store) as elsewhere:
            [swept] = await end_jobs_of_lost_workers(h.store, elsewhere, h.blobs, silent_for=0)
        events = await h.events_until_end(job.id)
        gate.set()
        await wait_until(lambda: not h.worker.running, what="the worker done with the job")
        assert await h.store.get_job(job.id) == swept
        assert swept.reason == f"worker {WORKER} stopped responding"
        stored = await h.store.events_after(job.id)
        assert [e.type for e in stored].count(EventType.END) == 1
        assert events[-1].data["reason"] == swept.reason
