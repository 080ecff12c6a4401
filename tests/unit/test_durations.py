"""Recorded durations (durations.py): what a sharded job splits by, the same for every shard
of its group whenever each starts; and the server's Python images (settings.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ci_server.durations import recorded_durations
from ci_server.models import Job, JobStatus
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.models import TestSummary as Summary
from ci_server.settings import Settings, default_python_images, parse_python_images
from ci_server.store.memory import MemoryStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def finished(
    store: MemoryStore,
    job_id: str,
    created: float,
    ended: float,
    durations: dict[str, float],
    **fields: object,
) -> None:
    job = Job(
        id=job_id,
        status=JobStatus.SUCCEEDED,
        created_at=at(created),
        started_at=at(created),
        finished_at=at(ended),
        owner_id="u1",
        project="app",
        summary=Summary(passed=len(durations)),
        **fields,  # type: ignore[arg-type]
    )
    await store.add_job(job)
    results = [
        Result(node_id, Outcome.PASSED, seconds, position=i)
        for i, (node_id, seconds) in enumerate(durations.items())
    ]
    await store.set_test_results(job_id, results)


def shard(job_id: str, created: float, index: int, group: str = "g-1") -> Job:
    return Job(
        id=job_id,
        created_at=at(created),
        owner_id="u1",
        project="app",
        group_id=group,
        shard_index=index,
        shard_count=2,
    )


async def test_each_tests_latest_duration_across_an_earlier_groups_shards() -> None:
    store = MemoryStore()
    await finished(store, "a-whole", 0, 5, {"t::a": 9.0, "t::b": 9.0, "t::c": 9.0})
    await finished(store, "b-shard1", 10, 12, {"t::a": 1.0}, group_id="g-0", shard_count=2)
    await finished(store, "c-shard2", 10, 13, {"t::b": 2.0}, group_id="g-0", shard_count=2)
    job = shard("d-shard1", 20, 1)
    await store.add_job(job)
    # The newest of each: a and b from the sharded group, c from the whole run before it.
    assert await recorded_durations(store, job) == {"t::a": 1.0, "t::b": 2.0, "t::c": 9.0}


async def test_every_shard_of_a_group_reads_the_same_jobs() -> None:
    store = MemoryStore()
    await finished(store, "a-whole", 0, 5, {"t::a": 3.0, "t::b": 1.0})
    first, second = shard("b-shard1", 10, 1), shard("c-shard2", 10, 2)
    await store.add_job(first)
    await store.add_job(second)
    before = await recorded_durations(store, first)
    # The first shard ends, and another job of the project too, before the second starts:
    # neither changes what the second splits by.
    ended = first.replace(status=JobStatus.SUCCEEDED, finished_at=at(20), summary=Summary(passed=1))
    await store.update_job(ended, expected=JobStatus.QUEUED)
    await store.set_test_results(first.id, [Result("t::a", Outcome.PASSED, 50.0)])
    await finished(store, "a-other", 9, 15, {"t::a": 70.0})
    assert await recorded_durations(store, second) == before == {"t::a": 3.0, "t::b": 1.0}


async def test_no_project_no_durations() -> None:
    store = MemoryStore()
    job = Job(id="x", owner_id="u1", project=None, shard_index=1, shard_count=2)
    await store.add_job(job)
    assert await recorded_durations(store, job) == {}


# -- Python images ----------------------------------------------------------------------------


def test_python_images_parse_and_refuse_what_is_not_version_equals_image() -> None:
    assert parse_python_images("3.11=ci-runner:bookworm, 3.13=ci-runner:trixie") == {
        "3.11": "ci-runner:bookworm",
        "3.13": "ci-runner:trixie",
    }
    for bad in ("3.11", "three=x", "3.11=", "3.11=a,3.11=b"):
        with pytest.raises(ValueError):
            parse_python_images(bad)
    with pytest.raises(ValueError, match="is not VERSION=IMAGE"):
        Settings(python_images="3.13:ci-runner:trixie")  # pyright: ignore[reportArgumentType]


def test_python_images_default_from_the_runner_image() -> None:
    assert default_python_images("ci-runner:bookworm") == {
        "3.11": "ci-runner:bookworm",
        "3.13": "ci-runner:trixie",
    }
    assert default_python_images("python:3.12-slim") == {"3.12": "python:3.12-slim"}
    assert default_python_images("registry:5000/tests:latest") == {}
    settings = Settings(runner_image="ci-runner:bookworm")
    assert "ci-runner:trixie" in settings.allowed_image_set
    assert settings.python_images == {"3.11": "ci-runner:bookworm", "3.13": "ci-runner:trixie"}
    # As the environment gives them (CI_PYTHON_IMAGES): a string.
    assert Settings(python_images="").python_images == {}  # pyright: ignore[reportArgumentType]
    given = Settings(python_images="3.12=x:y")  # pyright: ignore[reportArgumentType]
    assert given.python_images == {"3.12": "x:y"}
