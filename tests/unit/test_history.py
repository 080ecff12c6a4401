"""Failed first (history.py): which failures a new job of a project is told to run first."""

from __future__ import annotations

from ci_server.history import last_failed
from ci_server.models import Job, JobStatus
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.models import TestSummary as Summary
from ci_server.store.memory import MemoryStore
from tests.unit.test_durations import at, shard


async def ended(
    store: MemoryStore, job_id: str, created: float, end: float, failed: list[str], **fields: object
) -> None:
    job = Job(
        id=job_id,
        status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
        created_at=at(created),
        started_at=at(created),
        finished_at=at(end),
        owner_id="u1",
        project="app",
        summary=Summary(passed=1, failed=len(failed)),
        **fields,  # type: ignore[arg-type]
    )
    await store.add_job(job)
    results = [Result("t::ok", Outcome.PASSED, 0.1, position=0)] + [
        Result(node_id, Outcome.FAILED, 0.1, position=n + 1) for n, node_id in enumerate(failed)
    ]
    await store.set_test_results(job_id, results)


async def test_a_job_is_told_the_failures_of_its_projects_latest_finished_job() -> None:
    store = MemoryStore()
    await ended(store, "a-old", 0, 5, ["t::gone"])
    await ended(store, "b-new", 10, 15, ["t::x", "t::y"])
    job = Job(id="c-job", created_at=at(20), owner_id="u1", project="app")
    await store.add_job(job)

    told = await last_failed(store, job)

    assert told is not None
    assert (told.job_id, told.node_ids) == ("b-new", ("t::x", "t::y"))
    other = Job(id="d-job", created_at=at(20), owner_id="u2", project="app")
    await store.add_job(other)
    assert await last_failed(store, other) is None  # another user's `app` is another project


async def test_after_a_sharded_run_its_shards_failures_all_come_first() -> None:
    store = MemoryStore()
    await ended(store, "a-shard1", 0, 5, ["t::a"], group_id="g-0", shard_index=1, shard_count=2)
    await ended(store, "b-shard2", 0, 6, ["t::b"], group_id="g-0", shard_index=2, shard_count=2)
    job = Job(id="c-job", created_at=at(20), owner_id="u1", project="app")
    await store.add_job(job)

    told = await last_failed(store, job)

    assert told is not None and sorted(told.node_ids) == ["t::a", "t::b"]


async def test_every_shard_of_a_group_is_told_the_same_whenever_it_starts() -> None:
    # A shard's --lf narrows the suite before it splits it: told different failures, two
    # shards would split different sets.
    store = MemoryStore()
    await ended(store, "a-whole", 0, 5, ["t::a"])
    first, second = shard("b-shard1", 10, 1), shard("c-shard2", 10, 2)
    await store.add_job(first)
    await store.add_job(second)
    before = await last_failed(store, first)
    # The first shard ends, and another job of the project too, before the second starts.
    done = first.replace(status=JobStatus.FAILED, finished_at=at(20), summary=Summary(failed=1))
    await store.update_job(done, expected=JobStatus.QUEUED)
    await store.set_test_results(first.id, [Result("t::z", Outcome.FAILED, 1.0)])
    await ended(store, "a-other", 9, 15, ["t::other"])

    assert await last_failed(store, second) == before
    assert before is not None and before.node_ids == ("t::a",)
