"""The store contract for artifact listings, retention and environment uses: every backend
(memory, SQLite, PostgreSQL: the `store` fixture of tests/unit/conftest.py) passes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ci_server.models import Artifact, Job, JobNotFound, JobStatus
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.states import claim, transition
from ci_server.store.repository import JobStore
from tests.unit.test_store_contract import make_event, make_job

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def listing(*paths: str) -> list[Artifact]:
    return [Artifact(path, 10 * n, f"{n:064x}", n) for n, path in enumerate(paths)]


async def test_artifacts_round_trip_in_order_and_are_replaced(store: JobStore) -> None:
    job = make_job(1)
    await store.add_job(job)
    assert await store.artifacts(job.id) == []

    first = listing("junit.xml", "htmlcov/index.html", "reports/été.xml")
    await store.set_artifacts(job.id, first)
    assert await store.artifacts(job.id) == first

    await store.set_artifacts(job.id, listing("junit.xml"))
    assert await store.artifacts(job.id) == listing("junit.xml")
    assert await store.artifacts("0123456789ab") == []


async def finished(store: JobStore, n: int, ended_at: datetime, **changes: object) -> Job:
    """A job that ended at `ended_at`, with an event, a test result and an artifact."""
    job = make_job(n, **changes)
    await store.add_job(job)
    running = claim(job, "w")
    assert await store.update_job(running, expected=JobStatus.QUEUED)
    done = transition(running, JobStatus.SUCCEEDED, exit_code=0).replace(finished_at=ended_at)
    assert await store.update_job(done, expected=JobStatus.RUNNING)
    await store.append_events([make_event(job.id, 1)])
    await store.set_test_results(job.id, [Result("t::a", Outcome.PASSED, 0.1)])
    await store.set_artifacts(job.id, listing("junit.xml"))
    return done


async def test_prunable_jobs_are_the_finished_ones_past_the_age_oldest_first(
    store: JobStore,
) -> None:
    old = await finished(store, 1, NOW - timedelta(days=40))
    older = await finished(store, 2, NOW - timedelta(days=50))
    recent = await finished(store, 3, NOW - timedelta(days=1))
    queued = make_job(4, created_at=NOW - timedelta(days=90))
    await store.add_job(queued)
    running = make_job(5, created_at=NOW - timedelta(days=90))
    await store.add_job(running)
    assert await store.update_job(claim(running, "w"), expected=JobStatus.QUEUED)

    cutoff = NOW - timedelta(days=30)
    prunable = await store.prunable_jobs(finished_before=cutoff)
    assert [job.id for job in prunable] == [older.id, old.id]
    assert [job.id for job in await store.prunable_jobs(finished_before=cutoff, limit=1)] == [
        older.id
    ]
    assert recent.id not in {job.id for job in prunable}


async def test_prunable_jobs_past_the_newest_kept(store: JobStore) -> None:
    jobs = [await finished(store, n, NOW - timedelta(hours=10 - n)) for n in range(5)]
    queued = make_job(9)
    await store.add_job(queued)
    long_ago = NOW - timedelta(days=365)

    surplus = await store.prunable_jobs(finished_before=long_ago, keep_newest=2)
    assert [job.id for job in surplus] == [job.id for job in jobs[:3]]
    assert await store.prunable_jobs(finished_before=long_ago, keep_newest=0) == []
    assert await store.prunable_jobs(finished_before=long_ago, keep_newest=5) == []


async def test_one_users_many_jobs_never_push_out_anothers(store: JobStore) -> None:
    ann = await finished(store, 1, NOW - timedelta(hours=20), owner_id="ann")
    flood = [
        await finished(store, n, NOW - timedelta(hours=10 - n), owner_id="bob") for n in range(2, 6)
    ]
    long_ago = NOW - timedelta(days=365)

    surplus = await store.prunable_jobs(finished_before=long_ago, keep_newest=2)

    assert [job.id for job in surplus] == [job.id for job in flood[:2]]
    assert ann.id not in {job.id for job in surplus}  # her oldest job is her newest


async def test_delete_jobs_removes_finished_jobs_and_all_they_own_and_nothing_else(
    store: JobStore,
) -> None:
    doomed = await finished(store, 1, NOW - timedelta(days=40))
    kept = await finished(store, 2, NOW - timedelta(days=40))
    queued = make_job(3)
    await store.add_job(queued)
    await store.append_events([make_event(queued.id, 1)])

    deleted = await store.delete_jobs([doomed.id, queued.id, "0123456789ab"])

    assert deleted == [doomed.id]
    with pytest.raises(JobNotFound):
        await store.get_job(doomed.id)
    assert await store.events_after(doomed.id) == []
    assert await store.test_results(doomed.id) == []
    assert await store.artifacts(doomed.id) == []
    assert await store.list_jobs() == [queued, kept]
    assert len(await store.events_after(kept.id)) == 1
    assert len(await store.test_results(kept.id)) == 1
    assert await store.artifacts(kept.id) == listing("junit.xml")
    assert len(await store.events_after(queued.id)) == 1
    assert await store.delete_jobs([]) == []


async def test_environment_uses_keep_the_latest_and_can_be_forgotten(store: JobStore) -> None:
    assert await store.environment_uses() == {}
    await store.record_environment_use("ci-env:a", NOW)
    await store.record_environment_use("ci-env:a", NOW - timedelta(days=1))  # late news
    await store.record_environment_use("ci-env:b", NOW - timedelta(days=3))
    assert await store.environment_uses() == {
        "ci-env:a": NOW,
        "ci-env:b": NOW - timedelta(days=3),
    }
    await store.forget_environments(["ci-env:a", "ci-env:unknown"])
    assert await store.environment_uses() == {"ci-env:b": NOW - timedelta(days=3)}
