"""The JobStore contract for workers: registration, heartbeats, and the end of the jobs of
workers gone silent. Every backend (tests/unit/conftest.py) must pass it."""

from __future__ import annotations

import asyncio
import contextlib

from ci_server.models import JobStatus, utcnow
from ci_server.store.repository import JobStore, lost_worker_template
from tests.unit.conftest import StoreFactory
from tests.unit.test_store_contract import add_jobs

LOST = lost_worker_template("worker {worker} stopped responding")


async def test_a_registered_worker_is_listed_with_its_heartbeat(store: JobStore) -> None:
    before = utcnow()
    await store.register_worker("build-2", 4)
    await store.register_worker("build-1", 2)
    first, second = await store.list_workers()
    assert (first.name, first.max_jobs, second.name, second.max_jobs) == (
        "build-1",
        2,
        "build-2",
        4,
    )
    assert first.stopped_at is None
    assert 0 <= first.silent_seconds < 5
    # PostgreSQL stamps by its own clock: the same machine here, give or take a second.
    assert abs((first.started_at - before).total_seconds()) < 1
    assert first.heartbeat_at == first.started_at

    await store.worker_stopped("build-1")
    [stopped, _] = await store.list_workers()
    assert stopped.stopped_at is not None

    # Starting again: a new start, not stopped any more, its new concurrency.
    await store.register_worker("build-1", 3)
    [restarted, _] = await store.list_workers()
    assert (restarted.stopped_at, restarted.max_jobs) == (None, 3)
    assert restarted.started_at >= first.started_at


async def test_a_heartbeat_moves_the_last_one_forward(store: JobStore) -> None:
    await store.register_worker("w", 1)
    [registered] = await store.list_workers()
    await asyncio.sleep(0.05)
    await store.beat("w")
    [beaten] = await store.list_workers()
    assert beaten.heartbeat_at > registered.heartbeat_at
    assert beaten.started_at == registered.started_at
    await store.beat("never-registered")  # nothing to move: no error, no row
    assert [w.name for w in await store.list_workers()] == ["w"]


async def test_the_running_jobs_of_silent_workers_end_with_a_reason_naming_them(
    store: JobStore,
) -> None:
    for name in ("alive", "silent"):
        await store.register_worker(name, 2)
    jobs = await add_jobs(store, 5)
    for worker in ("silent", "alive", "silent", "gone"):  # "gone" never registered
        await store.claim_next_job(worker)
    await asyncio.sleep(0.3)
    await store.beat("alive")

    ended = await store.end_jobs_of_silent_workers(0.2, LOST)

    by_id = {job.id: job for job in ended}
    assert set(by_id) == {jobs[0].id, jobs[2].id, jobs[3].id}
    assert by_id[jobs[0].id].reason == "worker silent stopped responding"
    assert by_id[jobs[3].id].reason == "worker gone stopped responding"
    for job in ended:
        assert job.status is JobStatus.ERROR
        assert job.finished_at == LOST.finished_at
        assert job.exit_code is None
        assert await store.get_job(job.id) == job
    assert (await store.get_job(jobs[1].id)).status is JobStatus.RUNNING  # its worker beats
    assert (await store.get_job(jobs[4].id)).status is JobStatus.QUEUED  # no worker yet
    assert await store.end_jobs_of_silent_workers(0.2, LOST) == []  # each ends once


async def test_sweepers_racing_end_each_job_once(new_store: StoreFactory) -> None:
    """Six processes sweep at once: every lost job is returned by exactly one of them (the
    one that then writes its end event)."""
    async with contextlib.AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(new_store()) for _ in range(6)]
        jobs = await add_jobs(stores[0], 30)
        for n in range(30):
            await stores[0].claim_next_job(f"lost-{n % 3}")
        results = await asyncio.gather(
            *(store.end_jobs_of_silent_workers(0, LOST) for store in stores)
        )
        ended = sorted(job.id for swept in results for job in swept)
        assert ended == sorted(job.id for job in jobs)
