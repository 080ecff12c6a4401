"""The JobStore contract: every backend must pass this same suite.

The backends (memory, SQLite, PostgreSQL) are the `store` fixture's, in tests/unit/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ci_server.models import (
    EventType,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    new_job_id,
    utcnow,
)
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.models import TestSummary as Summary
from ci_server.states import claim, transition
from ci_server.store.repository import JobStore
from ci_server.store.signals import Signal, SignalKind
from ci_server.store.sqlite import SqliteStore
from tests.fakes import wait_until
from tests.unit.conftest import StoreFactory

QUEUED = JobStatus.QUEUED
BASE_TIME = datetime(2024, 5, 17, 9, 30, 0, 123456, tzinfo=UTC)


def make_job(n: int, **changes: Any) -> Job:
    """The n-th job: created n seconds (and n microseconds) after BASE_TIME."""
    created = BASE_TIME + timedelta(seconds=n, microseconds=n)
    return Job(id=new_job_id(), created_at=created).replace(**changes)


def make_event(job_id: str, seq: int, **data: Any) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        seq=seq,
        type=EventType.LOG,
        data={"stream": "stdout", "text": f"line {seq}", **data},
        time=BASE_TIME + timedelta(milliseconds=seq, microseconds=7),
    )


async def add_jobs(store: JobStore, count: int, **changes: Any) -> list[Job]:
    jobs = [make_job(n, **changes) for n in range(count)]
    for job in jobs:
        await store.add_job(job)
    return jobs


async def test_added_job_is_returned_by_get(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    assert await store.get_job(job.id) == job


async def test_get_unknown_job_raises_job_not_found(store: JobStore) -> None:
    await add_jobs(store, 2)
    with pytest.raises(JobNotFound) as raised:
        await store.get_job("0123456789ab")
    assert raised.value.job_id == "0123456789ab"


async def test_every_field_round_trips_exactly(store: JobStore) -> None:
    job = Job(
        id=new_job_id(),
        status=JobStatus.FAILED,
        created_at=BASE_TIME,
        started_at=BASE_TIME + timedelta(seconds=1, microseconds=1),
        finished_at=BASE_TIME + timedelta(minutes=3, microseconds=999_999),
        exit_code=1,
        reason="tests failed: ünïcödé ✓ and 'quotes' \"too\"",
        timeout_seconds=12.5,
        pytest_args=("-k", "fast and not slow", "--tb=short", "", "ü"),
        summary=Summary(passed=3, failed=1, errors=2, skipped=5),
        no_cache=True,
        owner_id="0a1b2c3d4e5f",
        worker="build-2.example.com",
        project="ünï app ✓",
        group_id="g-0a1b2c3d4e5f",
        python="3.13",
        shard_index=2,
        shard_count=4,
    )
    await store.add_job(job)
    stored = await store.get_job(job.id)
    assert stored == job
    assert stored.created_at.utcoffset() == timedelta(0)
    assert isinstance(stored.pytest_args, tuple)


async def test_a_group_s_jobs_are_added_at_once_and_found_by_its_id(store: JobStore) -> None:
    queued: list[Signal] = []
    await store.listen(SignalKind.QUEUED, queued.append)
    (lone,) = await add_jobs(store, 1)
    group = [
        make_job(1, group_id="g-0123456789ab", shard_index=n, shard_count=3) for n in (1, 2, 3)
    ]
    await store.add_jobs(group)
    other = make_job(2, group_id="g-ba9876543210")
    await store.add_job(other)
    found = await store.group_jobs("g-0123456789ab")
    assert sorted(found, key=lambda job: job.shard_index or 0) == group
    assert await store.group_jobs("g-000000000000") == []
    await wait_until(lambda: len(queued) == 5, what="a QUEUED signal per job")
    assert {signal.job_id for signal in queued} == {job.id for job in [lone, *group, other]}


async def test_a_group_with_a_job_that_cannot_be_added_adds_none(store: JobStore) -> None:
    (existing,) = await add_jobs(store, 1)
    group = [make_job(1, group_id="g-0123456789ab"), existing.replace(group_id="g-0123456789ab")]
    with pytest.raises(Exception):  # noqa: B017 - each backend its own duplicate error
        await store.add_jobs(group)
    assert await store.group_jobs("g-0123456789ab") == []
    assert [job.id for job in await store.list_jobs()] == [existing.id]


async def test_list_is_newest_first_and_limited(store: JobStore) -> None:
    jobs = await add_jobs(store, 5)
    newest_first = [job.id for job in reversed(jobs)]
    assert [job.id for job in await store.list_jobs()] == newest_first
    assert [job.id for job in await store.list_jobs(limit=2)] == newest_first[:2]


async def test_paging_with_before_visits_every_job_once(store: JobStore) -> None:
    jobs = await add_jobs(store, 25)
    expected = [job.id for job in reversed(jobs)]
    seen: list[str] = []
    pages: list[int] = []
    before: str | None = None
    for _ in range(5):  # 3 pages and an empty one; more means the paging never ends
        page = await store.list_jobs(limit=10, before=before)
        if not page:
            break
        pages.append(len(page))
        seen.extend(job.id for job in page)
        before = page[-1].id
    assert pages == [10, 10, 5]
    assert seen == expected  # same order, no overlap, no gap


async def test_paging_before_unknown_job_raises_job_not_found(store: JobStore) -> None:
    await add_jobs(store, 3)
    with pytest.raises(JobNotFound):
        await store.list_jobs(before="0123456789ab")


async def test_listing_one_project_pages_through_its_jobs_only(store: JobStore) -> None:
    projects = ["app", "lib", None]
    jobs = [make_job(n, project=projects[n % 3], owner_id=["ann", "bob"][n % 2]) for n in range(30)]
    for job in jobs:
        await store.add_job(job)
    apps = [job for job in reversed(jobs) if job.project == "app"]

    seen: list[Job] = []
    before: str | None = None
    while page := await store.list_jobs(limit=3, before=before, project="app"):
        seen.extend(page)
        before = page[-1].id
    assert seen == apps
    anns = await store.list_jobs(owner_id="ann", project="app")
    assert anns == [job for job in apps if job.owner_id == "ann"]
    assert await store.list_jobs(project="nothing") == []
    # Any job says where a page starts, of the project or not.
    assert await store.list_jobs(before=jobs[10].id, project="app") == [
        job for job in apps if job.created_at < jobs[10].created_at
    ]


async def test_jobs_with_status_oldest_first(store: JobStore) -> None:
    jobs = await add_jobs(store, 6)
    statuses = [
        JobStatus.QUEUED,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        JobStatus.SUCCEEDED,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
    ]
    for job, status in zip(jobs, statuses, strict=True):
        assert await store.update_job(job.replace(status=status), expected=JobStatus.QUEUED)

    queued = await store.jobs_with_status(JobStatus.QUEUED)
    assert [j.id for j in queued] == [jobs[0].id, jobs[2].id, jobs[5].id]
    assert all(j.status is JobStatus.QUEUED for j in queued)
    active = await store.jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING)
    assert [j.id for j in active] == [jobs[i].id for i in (0, 1, 2, 4, 5)]
    assert await store.jobs_with_status(JobStatus.CANCELLED) == []
    counts = await store.count_jobs(JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED)
    assert counts == {JobStatus.QUEUED: 3, JobStatus.RUNNING: 2, JobStatus.CANCELLED: 0}
    assert await store.count_jobs(JobStatus.SUCCEEDED) == {JobStatus.SUCCEEDED: 1}


async def test_update_job_stores_when_status_is_the_expected_one(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    running = job.replace(status=JobStatus.RUNNING, started_at=BASE_TIME + timedelta(seconds=5))
    assert await store.update_job(running, expected=JobStatus.QUEUED) is True
    assert await store.get_job(job.id) == running

    done = running.replace(
        status=JobStatus.SUCCEEDED,
        finished_at=BASE_TIME + timedelta(seconds=9),
        exit_code=0,
        reason="all good",
    )
    assert await store.update_job(done, expected=JobStatus.RUNNING) is True
    assert await store.get_job(job.id) == done


async def test_update_job_refuses_when_status_differs(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    cancelled = job.replace(status=JobStatus.CANCELLED, reason="cancelled by user")
    assert await store.update_job(cancelled, expected=JobStatus.QUEUED) is True

    late_start = job.replace(status=JobStatus.RUNNING, started_at=BASE_TIME)
    assert await store.update_job(late_start, expected=JobStatus.QUEUED) is False
    assert await store.get_job(job.id) == cancelled


async def test_update_job_refuses_unknown_job(store: JobStore) -> None:
    ghost = make_job(1)
    assert await store.update_job(ghost, expected=JobStatus.QUEUED) is False
    with pytest.raises(JobNotFound):
        await store.get_job(ghost.id)
    assert await store.list_jobs() == []


async def test_update_job_stores_the_worker_and_summary(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    running = job.replace(status=JobStatus.RUNNING, started_at=BASE_TIME, worker="w1")
    assert await store.update_job(running, expected=JobStatus.QUEUED)
    done = running.replace(
        status=JobStatus.SUCCEEDED, finished_at=BASE_TIME, summary=Summary(passed=2)
    )
    assert await store.update_job(done, expected=JobStatus.RUNNING)
    assert await store.get_job(job.id) == done


# -- the claim of a queued job ----------------------------------------------------------------


async def test_claims_take_queued_jobs_oldest_first(store: JobStore) -> None:
    jobs = [make_job(n) for n in range(6)]
    for job in random.Random(7).sample(jobs, len(jobs)):  # stored in another order
        await store.add_job(job)
    # Only queued jobs are claimed: not running or finished ones.
    for n, status in ((0, JobStatus.CANCELLED), (3, JobStatus.RUNNING)):
        assert await store.update_job(jobs[n].replace(status=status), expected=JobStatus.QUEUED)

    claimed = [await store.claim_next_job(f"worker-{n}") for n in range(4)]
    assert [job.id if job else None for job in claimed] == [
        jobs[1].id,
        jobs[2].id,
        jobs[4].id,
        jobs[5].id,
    ]
    assert await store.claim_next_job("worker-9") is None
    assert await store.jobs_with_status(JobStatus.QUEUED) == []


async def test_a_claimed_job_is_running_for_its_worker(store: JobStore) -> None:
    job = make_job(1, pytest_args=("-x",), owner_id="0a1b2c3d4e5f", timeout_seconds=60)
    await store.add_job(job)
    before = utcnow()
    claimed = await store.claim_next_job("build-2")
    assert claimed is not None
    assert claimed.status is JobStatus.RUNNING
    assert claimed.worker == "build-2"
    assert claimed.started_at is not None
    assert before <= claimed.started_at <= utcnow()
    # Exactly what the state machine makes of the job, and stored as such.
    assert claimed == claim(job, "build-2").replace(started_at=claimed.started_at)
    assert await store.get_job(job.id) == claimed


async def test_a_cancelled_job_is_never_claimed(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    cancelled = job.replace(status=JobStatus.CANCELLED, reason="cancelled by user")
    assert await store.update_job(cancelled, expected=JobStatus.QUEUED)
    assert await store.claim_next_job("w") is None
    assert await store.get_job(job.id) == cancelled


async def test_concurrent_claimers_take_each_job_exactly_once(new_store: StoreFactory) -> None:
    """20 claimers, each with a store of its own (its own connection, as another process
    would have), race for 200 jobs: every job is claimed, none twice."""
    async with contextlib.AsyncExitStack() as stack:
        stores = [await stack.enter_async_context(new_store()) for _ in range(20)]
        jobs = await add_jobs(stores[0], 200)
        start = asyncio.Event()

        async def claimer(store: JobStore, name: str) -> list[Job]:
            taken: list[Job] = []
            await start.wait()
            while job := await store.claim_next_job(name):
                taken.append(job)
                await asyncio.sleep(0)  # let the other claimers of this loop run
            return taken

        tasks = [
            asyncio.create_task(claimer(store, f"claimer-{n}")) for n, store in enumerate(stores)
        ]
        start.set()
        results = await asyncio.gather(*tasks)

        claimed_ids = [job.id for taken in results for job in taken]
        assert sorted(claimed_ids) == sorted(job.id for job in jobs)  # each exactly once
        assert sum(1 for taken in results if taken) > 1  # they did race
        for n, taken in enumerate(results):
            for job in taken:
                assert (await stores[0].get_job(job.id)).worker == f"claimer-{n}"
        assert len(await stores[0].jobs_with_status(JobStatus.RUNNING)) == 200


# -- the queue: positions, cancels asked of a worker, signals ----------------------------------


async def test_queue_positions_count_the_older_queued_jobs(store: JobStore) -> None:
    jobs = [make_job(n) for n in range(5)]
    for job in random.Random(3).sample(jobs, len(jobs)):
        await store.add_job(job)
    assert await store.update_job(jobs[1].replace(status=JobStatus.CANCELLED), expected=QUEUED)
    await store.claim_next_job("w")  # takes jobs[0]

    everyone = [job.id for job in jobs]
    assert await store.queue_positions(everyone) == {jobs[2].id: 1, jobs[3].id: 2, jobs[4].id: 3}
    assert await store.queue_positions([jobs[4].id, "0123456789ab"]) == {jobs[4].id: 3}
    assert await store.queue_positions([]) == {}


async def test_a_cancel_is_asked_of_running_jobs_only(store: JobStore) -> None:
    running, _, queued = await add_jobs(store, 3)
    await store.claim_next_job("build-1")  # the first job
    await store.claim_next_job("build-2")  # the second
    assert not await store.request_cancel(queued.id)
    assert await store.request_cancel(running.id)
    assert await store.request_cancel(running.id)  # asking again is harmless
    assert not await store.request_cancel("0123456789ab")

    assert await store.cancel_requests("build-1") == [running.id]
    assert await store.cancel_requests("build-2") == []
    # Once the job has ended, there is nothing left to stop.
    ended = (await store.get_job(running.id)).replace(status=JobStatus.CANCELLED)
    assert await store.update_job(ended, expected=JobStatus.RUNNING)
    assert await store.cancel_requests("build-1") == []


async def test_writes_signal_the_listeners_of_the_store(store: JobStore) -> None:
    heard: list[Signal] = []
    stops = [await store.listen(kind, heard.append) for kind in SignalKind]
    job = make_job(1)
    await store.add_job(job)
    await store.add_job(make_job(2, status=JobStatus.SUCCEEDED))  # not queued: no signal
    await store.claim_next_job("w")
    await store.request_cancel(job.id)
    await store.append_events([make_event(job.id, 1), make_event(job.id, 2)])
    await store.append_events([make_event(job.id, 3)])

    expected = [
        Signal(SignalKind.QUEUED, job.id),
        Signal(SignalKind.CANCEL, job.id),
        Signal(SignalKind.EVENTS, job.id, 2),  # one per job and batch, with its last seq
        Signal(SignalKind.EVENTS, job.id, 3),
    ]
    await wait_until(lambda: len(heard) >= len(expected), what="the signals", within=10)
    assert heard == expected

    for stop in stops:
        stop()
    await store.append_events([make_event(job.id, 4)])
    await store.ping()  # a round trip: a signal sent would have arrived by now
    assert heard == expected


async def test_events_come_back_in_order_per_job(store: JobStore) -> None:
    first, second = make_job(1), make_job(2)
    await store.add_job(first)
    await store.add_job(second)
    # One batch may mix jobs; a later batch continues the sequence.
    await store.append_events(
        [
            make_event(first.id, 1),
            make_event(second.id, 1),
            make_event(first.id, 2),
            make_event(first.id, 3),
            make_event(second.id, 2),
        ]
    )
    await store.append_events([make_event(first.id, 4), make_event(first.id, 5)])
    await store.append_events([])

    events = await store.events_after(first.id)
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert all(e.job_id == first.id for e in events)
    assert [e.seq for e in await store.events_after(second.id)] == [1, 2]


async def test_events_after_honours_after_seq_and_limit(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    await store.append_events([make_event(job.id, seq) for seq in range(1, 11)])

    assert [e.seq for e in await store.events_after(job.id, 4)] == [5, 6, 7, 8, 9, 10]
    assert [e.seq for e in await store.events_after(job.id, limit=3)] == [1, 2, 3]
    assert [e.seq for e in await store.events_after(job.id, 4, limit=3)] == [5, 6, 7]
    assert [e.seq for e in await store.events_after(job.id, 8, limit=5)] == [9, 10]
    assert await store.events_after(job.id, 10) == []
    assert await store.events_after("0123456789ab") == []


async def test_last_event_seq(store: JobStore) -> None:
    job, other = make_job(1), make_job(2)
    await store.add_job(job)
    await store.add_job(other)
    assert await store.last_event_seq(job.id) == 0
    await store.append_events([make_event(job.id, seq) for seq in range(1, 8)])
    assert await store.last_event_seq(job.id) == 7
    assert await store.last_event_seq(other.id) == 0


async def test_events_round_trip_exactly(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    events = [
        JobEvent(job.id, 1, EventType.STATUS, {"status": "running"}, BASE_TIME),
        JobEvent(
            job.id,
            2,
            EventType.LOG,
            {"stream": "stdout", "text": "naïve ✓ \t tab \\ backslash \ufffd"},
            BASE_TIME + timedelta(microseconds=1),
        ),
        JobEvent(
            job.id,
            3,
            EventType.END,
            {
                "status": "failed",
                "exit_code": 1,
                "success": False,
                "reason": None,
                "duration_seconds": 1.25,
            },
            BASE_TIME + timedelta(hours=1, microseconds=999_999),
        ),
    ]
    await store.append_events(events)
    stored = await store.events_after(job.id)
    assert stored == events
    # Keys in their order, so that a replayed event reads as the live one did.
    assert [list(event.data) for event in stored] == [list(event.data) for event in events]


async def test_stores_opening_a_new_database_at_once_all_work(new_store: StoreFactory) -> None:
    """An API process and workers starting together on a new database: each migrates it or
    finds it migrated, none fails."""
    async with contextlib.AsyncExitStack() as stack:
        stores = [new_store() for _ in range(4)]
        await asyncio.gather(*(stack.enter_async_context(store) for store in stores))
        [job] = await add_jobs(stores[0], 1)
        for store in stores:
            assert await store.get_job(job.id) == job


async def test_data_survives_reopening_the_store(new_store: StoreFactory) -> None:
    async with new_store() as first:
        jobs = await add_jobs(first, 3)
        done = jobs[1].replace(status=JobStatus.ERROR, finished_at=BASE_TIME, reason="boom")
        assert await first.update_job(done, expected=JobStatus.QUEUED)
        events = [make_event(jobs[1].id, seq) for seq in (1, 2, 3)]
        await first.append_events(events)

    async with new_store() as reopened:
        assert await reopened.get_job(jobs[1].id) == done
        assert [j.id for j in await reopened.list_jobs()] == [j.id for j in reversed(jobs)]
        assert await reopened.events_after(jobs[1].id) == events
        assert await reopened.last_event_seq(jobs[1].id) == 3
        # Still writable after the reopen (the schema was not re-created over the data).
        await reopened.append_events([make_event(jobs[1].id, 4)])
        assert await reopened.last_event_seq(jobs[1].id) == 4


def make_results(count: int) -> list[Result]:
    """Every third failed with a message, the others passed, at positions 0..count-1."""
    return [
        Result(
            f"tests/test_x.py::test_{n}",
            Outcome.FAILED if n % 3 == 0 else Outcome.PASSED,
            n / 100,
            message=f"assert {n} == 0" if n % 3 == 0 else None,
            details="Traceback ✓\n\tline" if n % 3 == 0 else None,
            position=n,
        )
        for n in range(count)
    ]


async def test_test_results_come_back_in_order_and_page_by_position(store: JobStore) -> None:
    job, other = await add_jobs(store, 2)
    results = make_results(10)
    await store.set_test_results(job.id, results)
    await store.set_test_results(other.id, make_results(2))

    assert await store.test_results(job.id) == results
    assert await store.test_results(job.id, limit=4) == results[:4]
    assert await store.test_results(job.id, after=3, limit=4) == results[4:8]
    assert await store.test_results(job.id, after=7, limit=4) == results[8:]
    assert await store.test_results(job.id, after=9) == []
    failed = await store.test_results(job.id, outcomes=[Outcome.FAILED], after=0, limit=2)
    assert failed == [results[3], results[6]]
    assert await store.test_results(job.id, outcomes=[Outcome.XFAILED]) == []


async def test_set_test_results_replaces_the_job_s_results(store: JobStore) -> None:
    (job,) = await add_jobs(store, 1)
    await store.set_test_results(job.id, make_results(5))
    await store.set_test_results(job.id, make_results(2))
    assert await store.test_results(job.id) == make_results(2)


async def finished_run(
    store: JobStore, n: int, outcomes: dict[str, Outcome], **changes: Any
) -> Job:
    """The n-th job of alice's `app`, finished, with one result per test of `outcomes`."""
    job = make_job(
        n, **{"owner_id": "alice", "project": "app", "status": JobStatus.FAILED, **changes}
    )
    await store.add_job(job)
    await store.set_test_results(
        job.id,
        [
            Result(node_id, outcome, n + position / 10, position=position)
            for position, (node_id, outcome) in enumerate(outcomes.items())
        ],
    )
    return job


async def test_history_holds_each_test_s_latest_outcomes_newest_first(store: JobStore) -> None:
    passed, failed = Outcome.PASSED, Outcome.FAILED
    old = await finished_run(store, 1, {"t.py::b": passed, "t.py::a": failed})
    new = await finished_run(store, 3, {"t.py::a": passed})
    middle = await finished_run(store, 2, {"t.py::b": failed, "t.py::a": failed})
    # Not in the history: a running job, another owner's `app`, alice's other project.
    await finished_run(store, 4, {"t.py::a": failed}, status=JobStatus.RUNNING)
    await finished_run(store, 5, {"t.py::a": failed}, owner_id="bob")
    await finished_run(store, 6, {"t.py::a": failed}, project="lib")

    history = await store.test_history("alice", "app")

    assert [test.node_id for test in history] == ["t.py::a", "t.py::b"]
    a, b = history
    assert [(run.job_id, run.outcome, run.duration_seconds) for run in a.runs] == [
        (new.id, passed, 3.0),
        (middle.id, failed, 2.1),
        (old.id, failed, 1.1),
    ]
    assert [(run.job_id, run.outcome) for run in b.runs] == [(middle.id, failed), (old.id, passed)]
    assert round(a.failure_rate, 3) == 0.667
    assert a.median_duration == 2.1
    assert await store.test_history("bob", "app") != history
    assert await store.test_history("carol", "app") == []


async def test_history_tells_a_flaky_test_and_its_flake_rate(store: JobStore) -> None:
    """Flaky: failed, then passed on a rerun in the same job; not a failure."""
    for n, outcome in enumerate([Outcome.FLAKY, Outcome.PASSED, Outcome.FAILED, Outcome.FLAKY]):
        await finished_run(store, n, {"t.py::a": outcome, "t.py::b": Outcome.PASSED})
    a, b = await store.test_history("alice", "app")
    assert (a.flaky_runs, a.flake_rate, a.failure_rate) == (2, 0.5, 0.25)
    assert (b.flaky_runs, b.flake_rate) == (0, 0.0)


async def test_history_tells_a_test_that_passed_and_failed_on_the_same_content(
    store: JobStore,
) -> None:
    """Flaky too: a failure on content (files and environment) the test also passed on;
    a failure on changed content is not, nor are jobs without a content hash."""
    runs = [
        (Outcome.PASSED, "same"),
        (Outcome.FAILED, "same"),
        (Outcome.FAILED, "changed"),
        (Outcome.PASSED, None),
        (Outcome.FAILED, None),
    ]
    for n, (outcome, content) in enumerate(runs):
        await finished_run(store, n, {"t.py::a": outcome}, content_hash=content)
    (a,) = await store.test_history("alice", "app")
    assert [run.content_hash for run in a.runs] == [None, None, "changed", "same", "same"]
    assert (a.flaky_runs, a.runs_on_flaky_content, a.failures_on_flaky_content) == (1, 2, 1)
    assert a.flake_rate == 0.2


async def test_a_job_s_content_hash_is_kept_once_it_ends(store: JobStore) -> None:
    (job,) = await add_jobs(store, 1)
    assert (await store.get_job(job.id)).content_hash is None
    claimed = await store.claim_next_job("w1")
    assert claimed is not None
    ended = transition(claimed, JobStatus.SUCCEEDED, exit_code=0).replace(content_hash="c0ffee")
    assert await store.update_job(ended, expected=JobStatus.RUNNING)
    assert (await store.get_job(job.id)).content_hash == "c0ffee"
    (listed,) = await store.list_jobs()
    assert listed.content_hash == "c0ffee"


async def test_history_keeps_at_most_the_runs_asked_for(store: JobStore) -> None:
    jobs = [await finished_run(store, n, {"t.py::a": Outcome.PASSED}) for n in range(5)]
    (a,) = await store.test_history("alice", "app", runs=3)
    assert [run.job_id for run in a.runs] == [job.id for job in reversed(jobs)][:3]


async def test_a_summary_round_trips_with_its_warning_kept_count_and_collection(
    store: JobStore,
) -> None:
    (job,) = await add_jobs(store, 1)
    summary = Summary(
        passed=3,
        failed=1,
        xfailed=2,
        xpassed=1,
        flaky=2,
        rerun=4,
        results_kept=5,
        warning="w",
        collected=40,
        collected_sha256="ab" * 32,
    )
    done = job.replace(status=JobStatus.FAILED, exit_code=1, summary=summary)
    assert await store.update_job(done, expected=JobStatus.QUEUED)
    assert (await store.get_job(job.id)).summary == summary


async def test_sqlite_keeps_summaries_and_results_from_before_xfailed_counts(
    tmp_path: Path,
) -> None:
    """A summary stored with four counts reads back with the new ones at 0."""
    path = tmp_path / "old.db"
    async with SqliteStore(path) as store:
        (job,) = await add_jobs(store, 1)
        await store.set_test_results(job.id, make_results(3))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "UPDATE jobs SET summary = ? WHERE id = ?",
            ('{"passed": 2, "failed": 1, "errors": 0, "skipped": 0}', job.id),
        )
        db.commit()

    async with SqliteStore(path) as reopened:
        summary = (await reopened.get_job(job.id)).summary
        assert summary == Summary(passed=2, failed=1)
        assert await reopened.test_results(job.id, outcomes=[Outcome.FAILED]) == [
            make_results(3)[0]
        ]
