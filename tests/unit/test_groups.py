"""Job groups: their jobs, status and summary, what a submission makes of them."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ci_server.groups import (
    GroupNotFound,
    InvalidGroup,
    JobGroup,
    Variant,
    collection_problems,
    is_group_id,
    merged_summary,
    new_group_id,
    variants,
)
from ci_server.models import COLLECTION_NOT_SAID, Job, JobStatus, new_job_id
from ci_server.models import TestSummary as Summary
from ci_server.states import transition
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.memory import MemoryStore
from ci_server.uploads import release_upload


def test_a_job_s_label_names_its_python_version_and_shard() -> None:
    assert Job(id="a", python="3.13", shard_index=2, shard_count=4).label == "py3.13 2/4"
    assert Job(id="a", python="3.11").label == "py3.11"
    assert Job(id="a", shard_index=1, shard_count=2).label == "1/2"


def test_a_lone_job_has_no_label() -> None:
    assert Job(id="a").label == ""


S = JobStatus


def group_of(*statuses: JobStatus) -> JobGroup:
    return JobGroup.of(
        "g-0123456789ab",
        [
            Job(id=f"j{n}", status=status, shard_index=n, shard_count=len(statuses))
            for n, status in enumerate(statuses, 1)
        ],
    )


def test_a_group_waits_while_all_its_jobs_wait_and_runs_until_all_have_ended() -> None:
    assert group_of(S.QUEUED, S.QUEUED).status is S.QUEUED
    assert group_of(S.QUEUED, S.RUNNING).status is S.RUNNING
    assert group_of(S.SUCCEEDED, S.QUEUED).status is S.RUNNING
    running = group_of(S.FAILED, S.RUNNING)
    assert (running.status, running.success, running.finished_at) == (S.RUNNING, None, None)


def test_an_ended_group_is_its_worst_job() -> None:
    assert group_of(S.SUCCEEDED, S.SUCCEEDED).status is S.SUCCEEDED
    assert group_of(S.SUCCEEDED, S.CANCELLED).status is S.CANCELLED
    assert group_of(S.CANCELLED, S.FAILED).status is S.FAILED
    assert group_of(S.FAILED, S.TIMED_OUT, S.SUCCEEDED).status is S.TIMED_OUT
    assert group_of(S.TIMED_OUT, S.ERROR, S.FAILED).status is S.ERROR
    assert group_of(S.SUCCEEDED, S.SUCCEEDED).success is True
    assert group_of(S.SUCCEEDED, S.FAILED).success is False


def test_a_group_s_summary_adds_its_jobs_counts() -> None:
    jobs = [
        Job(id="a", python="3.11", summary=Summary(passed=3, failed=1, skipped=2)),
        Job(id="b", python="3.13", summary=Summary(passed=4, xfailed=1, rerun=2, flaky=1)),
        Job(id="c", python="3.12"),  # no counts yet
    ]
    assert merged_summary(jobs) == Summary(
        passed=7, failed=1, skipped=2, xfailed=1, rerun=2, flaky=1
    )
    assert merged_summary([Job(id="a"), Job(id="b")]) is None


def test_a_group_s_summary_names_the_job_of_a_warning_and_counts_kept_results() -> None:
    jobs = [
        Job(id="a", python="3.11", summary=Summary(passed=10, results_kept=5)),
        Job(
            id="b",
            python="3.13",
            summary=Summary(passed=3, warning="report disagrees with exit code 1"),
        ),
    ]
    merged = merged_summary(jobs)
    assert merged is not None
    assert merged.results_kept == 8  # 5 kept of a, all 3 of b
    assert merged.warning == "py3.13: report disagrees with exit code 1"


SAME, OTHER = "a" * 64, "b" * 64
UNSURE = "some tests may have run twice or not at all"
DIFFERENT = f"the shards collected different tests (2 sets): {UNSURE}"


def shards_saying(
    *said: str | None, status: JobStatus = S.SUCCEEDED, python: str | None = None
) -> list[Job]:
    """A shard per `said` (what it collected: a SHA-256, COLLECTION_NOT_SAID, or None as
    from before shards said), each passing 20 tests."""
    return [
        Job(
            id=f"{python}-{n}",
            status=status,
            python=python,
            shard_index=n,
            shard_count=len(said),
            summary=Summary(passed=20, collected=40, collected_sha256=sha256),
        )
        for n, sha256 in enumerate(said, 1)
    ]


def test_shards_that_collected_the_same_tests_raise_nothing() -> None:
    group = JobGroup.of("g-0123456789ab", shards_saying(SAME, SAME, SAME))
    assert collection_problems(group.jobs) == []
    assert group.status is S.SUCCEEDED
    assert group.summary == Summary(passed=60)


def test_shards_that_collected_different_tests_fail_the_group_with_a_warning() -> None:
    group = JobGroup.of("g-0123456789ab", shards_saying(SAME, OTHER, SAME))
    assert collection_problems(group.jobs) == [DIFFERENT]
    assert (group.status, group.success) == (S.FAILED, False)
    assert group.summary == Summary(passed=60, warning=DIFFERENT)
    assert all(job.status is S.SUCCEEDED for job in group.jobs)  # each job passed its part


def test_a_shard_that_did_not_say_fails_the_group_naming_it() -> None:
    group = JobGroup.of("g-0123456789ab", shards_saying(SAME, COLLECTION_NOT_SAID))
    assert collection_problems(group.jobs) == [f"shard 2/2 did not say what it collected: {UNSURE}"]
    assert group.status is S.FAILED
    silent = shards_saying(COLLECTION_NOT_SAID, COLLECTION_NOT_SAID)
    said = f"shards 1/2, 2/2 did not say what they collected: {UNSURE}"
    assert collection_problems(silent) == [said]


def test_the_shards_of_each_python_version_are_compared_among_themselves() -> None:
    jobs = [*shards_saying(SAME, SAME, python="3.11"), *shards_saying(OTHER, OTHER, python="3.13")]
    assert collection_problems(jobs) == []  # versions may collect different tests
    jobs = [*shards_saying(SAME, SAME, python="3.11"), *shards_saying(SAME, OTHER, python="3.13")]
    assert collection_problems(jobs) == [f"py3.13: {DIFFERENT}"]


def test_a_group_fails_on_a_collection_problem_only_once_it_has_ended() -> None:
    running = JobGroup.of(
        "g-0123456789ab",
        [*shards_saying(SAME, OTHER), Job(id="c", status=S.RUNNING, shard_index=3, shard_count=3)],
    )
    assert running.status is S.RUNNING
    assert running.summary is not None and running.summary.warning == DIFFERENT
    # A worse status stays: a timeout or the system's error says more than a failure.
    timed_out = shards_saying(SAME, OTHER, status=S.TIMED_OUT)
    assert JobGroup.of("g-0123456789ab", timed_out).status is S.TIMED_OUT
    cancelled = shards_saying(SAME, OTHER, status=S.CANCELLED)
    assert JobGroup.of("g-0123456789ab", cancelled).status is S.FAILED


def test_shards_from_before_shards_said_or_without_a_report_are_not_compared() -> None:
    assert collection_problems(shards_saying(None, None)) == []
    no_report = Job(id="x", status=S.FAILED, shard_index=2, shard_count=2)
    assert collection_problems([*shards_saying(SAME), no_report]) == []
    lone = Job(id="y", summary=Summary(passed=1, collected_sha256=COLLECTION_NOT_SAID))
    assert collection_problems([lone]) == []  # not a shard


def test_a_group_s_jobs_come_by_python_version_then_shard() -> None:
    jobs = [
        Job(id=f"{python}-{shard}", python=python, shard_index=shard, shard_count=2)
        for python in ("3.13", "3.9", "3.11")
        for shard in (2, 1)
    ]
    group = JobGroup.of("g-0123456789ab", jobs)
    assert [job.label for job in group.jobs] == [
        "py3.9 1/2",
        "py3.9 2/2",
        "py3.11 1/2",
        "py3.11 2/2",
        "py3.13 1/2",
        "py3.13 2/2",
    ]


def test_a_group_lasts_from_its_first_start_to_its_last_end() -> None:
    t0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    jobs = [
        Job(
            id="a",
            status=S.SUCCEEDED,
            started_at=t0 + timedelta(seconds=2),
            finished_at=t0 + timedelta(seconds=9),
        ),
        Job(id="b", status=S.FAILED, started_at=t0, finished_at=t0 + timedelta(seconds=5)),
    ]
    group = JobGroup.of("g-0123456789ab", jobs)
    assert (group.started_at, group.finished_at) == (t0, t0 + timedelta(seconds=9))
    assert group.duration_seconds == 9.0


def test_an_empty_group_is_not_found() -> None:
    with pytest.raises(GroupNotFound, match="no group with id 'g-0123456789ab'"):
        JobGroup.of("g-0123456789ab", [])


KNOWN = ("3.11", "3.13")


def test_versions_times_shards_make_the_variants() -> None:
    assert variants(["3.11", "3.13"], 2, known=KNOWN, most=16) == [
        Variant("3.11", 1, 2),
        Variant("3.11", 2, 2),
        Variant("3.13", 1, 2),
        Variant("3.13", 2, 2),
    ]
    assert variants([], 3, known=KNOWN, most=16) == [Variant(None, n, 3) for n in (1, 2, 3)]
    assert variants(["3.13"], None, known=KNOWN, most=16) == [Variant("3.13")]
    assert variants([], 1, known=KNOWN, most=16) == [Variant()]
    assert variants(["3.11", " 3.11"], None, known=KNOWN, most=16) == [Variant("3.11")]


def test_an_unknown_python_version_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(
        InvalidGroup,
        match=r"unknown Python version\(s\) '3\.7': this server "
        r"offers 3\.11, 3\.13 \(CI_PYTHON_IMAGES\)",
    ):
        variants(["3.11", "3.7"], None, known=KNOWN, most=16)
    with pytest.raises(InvalidGroup, match="offers none"):
        variants(["3.11"], None, known=(), most=16)


def test_more_jobs_than_the_server_allows_are_refused() -> None:
    with pytest.raises(InvalidGroup, match=r"18 jobs asked \(2 Python version\(s\) x 9 shard"):
        variants(["3.11", "3.13"], 9, known=KNOWN, most=16)
    with pytest.raises(InvalidGroup, match="1 or more shards, not 0"):
        variants([], 0, known=KNOWN, most=16)


def test_group_ids_are_told_from_job_ids() -> None:
    group_id = new_group_id()
    assert is_group_id(group_id) and len(group_id) == 14
    assert not is_group_id(new_job_id())


async def test_a_group_s_upload_goes_when_its_last_job_ends(tmp_path: Path) -> None:
    store, blobs = MemoryStore(), FileBlobStore(tmp_path)
    jobs = [Job(id=f"j{n}", group_id="g-0123456789ab") for n in (1, 2)]
    await store.add_jobs(jobs)
    await blobs.put("g-0123456789ab", io.BytesIO(b"zip"))
    first = transition(jobs[0], S.ERROR, reason="boom")
    assert await store.update_job(first, expected=S.QUEUED)
    await release_upload(store, blobs, first)
    assert await blobs.exists("g-0123456789ab")  # j2 still needs it
    second = transition(jobs[1], S.CANCELLED)
    assert await store.update_job(second, expected=S.QUEUED)
    await release_upload(store, blobs, second)
    assert not await blobs.exists("g-0123456789ab")


async def test_a_lone_job_s_upload_goes_when_it_ends(tmp_path: Path) -> None:
    store, blobs = MemoryStore(), FileBlobStore(tmp_path)
    job = Job(id="0123456789ab")
    await store.add_job(job)
    await blobs.put(job.id, io.BytesIO(b"zip"))
    await release_upload(store, blobs, job)
    assert not await blobs.exists(job.id)
