"""The domain of job groups: one submission run as several jobs (Python versions x shards).

A group's jobs share its id (`g-` and 12 hex digits, never a job's id), their owner, their
project, their upload (one blob, kept under the group's id until its last job ends) and
their `created_at`, so that they sit side by side in any listing. The group itself is not
stored: it is what its jobs say.

Its status: `queued` while every job waits; `running` while any job is queued or running
and not all wait; once every job has ended, the worst of theirs, in GROUP_STATUS_ORDER:
error (the system failed: the result is unknown) > timed_out > failed (a test's verdict)
> cancelled > succeeded. A group that a user cancelled after one of its jobs failed is
`failed`: that failure is a finding, the cancel is not.

Shards must run every test exactly once, which holds only if every shard collected the same
tests (each splits what it collected: shard_plugin.py). Each says what it collected (a
count and a SHA-256 of the node ids, TestSummary.collected_sha256); when the shards of one
Python version disagree, or one did not say, the group's summary warns and the group is
`failed` at least, whatever its jobs' exit codes: some tests may have run twice or never,
and the counts cannot tell (collection_problems).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from ci_server.models import COLLECTION_NOT_SAID, CIError, Job, JobStatus, TestSummary, utcnow

GROUP_PREFIX = "g-"
MAX_GROUP_JOBS = 16
"""The most jobs one submission may make, unless the server says otherwise
(CI_MAX_GROUP_JOBS)."""
GROUP_STATUS_ORDER = (
    JobStatus.ERROR,
    JobStatus.TIMED_OUT,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.SUCCEEDED,
)
"""The statuses of ended jobs, worst first: an ended group's status is its worst job's."""
NOT_COUNTS = ("results_kept", "warning", "collected", "collected_sha256")
"""The fields of a TestSummary that are not summed over a group's jobs."""


def new_group_id() -> str:
    return GROUP_PREFIX + uuid.uuid4().hex[:12]


def is_group_id(identifier: str) -> bool:
    return identifier.startswith(GROUP_PREFIX)


class GroupNotFound(CIError):
    def __init__(self, group_id: str) -> None:
        super().__init__(f"no group with id {group_id!r}")
        self.group_id = group_id


class GroupAlreadyFinished(CIError):
    """Cancelling a group whose jobs have all ended: they stay as they were."""

    def __init__(self, group: JobGroup) -> None:
        super().__init__(f"group {group.id} has already finished: {group.status}")
        self.group = group


class InvalidGroup(CIError):
    """A submission that cannot make its jobs: an unknown Python version, too many jobs."""


@dataclass(frozen=True, slots=True)
class Variant:
    """What one job of a submission runs: under which Python, which shard."""

    python: str | None = None
    shard_index: int | None = None
    shard_count: int | None = None


def variants(
    pythons: Sequence[str], shards: int | None, *, known: Iterable[str], most: int
) -> list[Variant]:
    """One Variant per (Python version x shard) a submission asks for: each version of
    `pythons` (none: the server's default) times `shards` (None or 1: the whole suite).

    InvalidGroup for a version not in `known` (the server's), or more than `most` jobs.
    """
    versions = list(dict.fromkeys(version.strip() for version in pythons))
    known = set(known)
    unknown = [version for version in versions if version not in known]
    if unknown:
        offered = ", ".join(sorted(known, key=version_key)) or "none: it runs its default image"
        raise InvalidGroup(
            f"unknown Python version(s) {_some(unknown)}: this server offers "
            f"{offered} (CI_PYTHON_IMAGES)"
        )
    count = 1 if shards is None else shards
    if count < 1:
        raise InvalidGroup(f"a suite is split into 1 or more shards, not {count}")
    total = max(len(versions), 1) * count
    if total > most:
        raise InvalidGroup(
            f"{total} jobs asked ({max(len(versions), 1)} Python version(s) x {count} "
            f"shard(s)); this server runs at most {most} per submission"
        )
    shard_numbers: list[tuple[int | None, int | None]] = (
        [(index, count) for index in range(1, count + 1)] if count > 1 else [(None, None)]
    )
    return [
        Variant(python, index, total_shards)
        for python in (versions or [None])
        for index, total_shards in shard_numbers
    ]


def _some(versions: Sequence[str], most: int = 5) -> str:
    """The first `most` of `versions`, each cut at 40 characters, and how many more: a
    submission may name a thousand (the message went back whole, a megabyte)."""
    named = ", ".join(repr(version[:40]) for version in versions[:most])
    return named + (f" and {len(versions) - most} more" if len(versions) > most else "")


def version_key(version: str | None) -> tuple[tuple[int, int, str], ...]:
    """A Python version's place in order: 3.9 before 3.13 (numbers compare as numbers)."""
    if version is None:
        return ()
    parts = version.split(".")
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in parts)


def job_order(job: Job) -> tuple[tuple[tuple[int, int, str], ...], int]:
    return version_key(job.python), job.shard_index or 0


def collection_problems(jobs: Iterable[Job]) -> list[str]:
    """What the shards of each Python version say against each other about the tests they
    collected: that they collected different sets, or that some did not say (none: they
    agree, or nothing said can be compared yet). Only shards with a summary count: a shard
    that ran no tests split nothing."""
    said: dict[str | None, list[tuple[Job, str]]] = {}
    for job in jobs:
        if job.shard_count is not None and job.summary is not None:
            sha256 = job.summary.collected_sha256
            if sha256 is not None:
                said.setdefault(job.python, []).append((job, sha256))
    problems = []
    for python in sorted(said, key=version_key):
        version = "" if python is None else f"py{python}: "
        sets = {sha256 for _, sha256 in said[python] if sha256 != COLLECTION_NOT_SAID}
        silent = [job.label for job, sha256 in said[python] if sha256 == COLLECTION_NOT_SAID]
        if len(sets) > 1:
            problems.append(
                f"{version}the shards collected different tests ({len(sets)} sets): "
                "some tests may have run twice or not at all"
            )
        if silent:
            which = f"shard {silent[0]}" if len(silent) == 1 else f"shards {', '.join(silent)}"
            problems.append(
                f"{which} did not say what {'it' if len(silent) == 1 else 'they'} collected: "
                "some tests may have run twice or not at all"
            )
    return problems


def merged_summary(jobs: Iterable[Job]) -> TestSummary | None:
    """The sum of the jobs' counts; None when none has counts yet. `results_kept` is set
    when some job kept fewer results than its tests; a job's `warning` is kept, named by
    its label, and so are the shards' collection_problems."""
    jobs = list(jobs)
    summaries = [(job, job.summary) for job in jobs if job.summary is not None]
    if not summaries:
        return None
    counts = {
        name: sum(getattr(summary, name) for _, summary in summaries)
        for name in (f.name for f in fields(TestSummary))
        if name not in NOT_COUNTS
    }
    kept = None
    if any(summary.results_kept is not None for _, summary in summaries):
        kept = sum(
            summary.total if summary.results_kept is None else summary.results_kept
            for _, summary in summaries
        )
    warnings = [
        f"{job.label or job.id}: {summary.warning}" for job, summary in summaries if summary.warning
    ]
    warnings += collection_problems(jobs)
    warning = "; ".join(warnings) or None
    # A group's collection is its shards' (none of its own): what they say is in `warning`.
    return TestSummary(**counts, results_kept=kept, warning=warning, collected_sha256=None)


def group_status(statuses: Iterable[JobStatus]) -> JobStatus:
    """The group's status from its jobs' (see the module's docstring)."""
    statuses = list(statuses)
    if not all(status.is_terminal for status in statuses):
        waiting = all(status is JobStatus.QUEUED for status in statuses)
        return JobStatus.QUEUED if waiting else JobStatus.RUNNING
    return min(statuses, key=GROUP_STATUS_ORDER.index)


@dataclass(frozen=True, slots=True)
class JobGroup:
    """A group as its jobs say it is, its jobs in order: by Python version, then shard."""

    id: str
    jobs: tuple[Job, ...]

    @classmethod
    def of(cls, group_id: str, jobs: Iterable[Job]) -> JobGroup:
        ordered = tuple(sorted(jobs, key=job_order))
        if not ordered:
            raise GroupNotFound(group_id)
        return cls(group_id, ordered)

    @property
    def status(self) -> JobStatus:
        """group_status, but `failed` at least once it has ended if its shards disagree
        on what they collected (collection_problems)."""
        status = group_status(job.status for job in self.jobs)
        if not status.is_terminal:
            return status
        milder = GROUP_STATUS_ORDER.index(status) > GROUP_STATUS_ORDER.index(JobStatus.FAILED)
        return JobStatus.FAILED if milder and collection_problems(self.jobs) else status

    @property
    def success(self) -> bool | None:
        """True or False once every job has ended, None before."""
        status = self.status
        return None if not status.is_terminal else status is JobStatus.SUCCEEDED

    @property
    def summary(self) -> TestSummary | None:
        return merged_summary(self.jobs)

    @property
    def owner_id(self) -> str | None:
        return self.jobs[0].owner_id

    @property
    def project(self) -> str | None:
        return self.jobs[0].project

    @property
    def created_at(self) -> datetime:
        return min(job.created_at for job in self.jobs)

    @property
    def started_at(self) -> datetime | None:
        started = [job.started_at for job in self.jobs if job.started_at is not None]
        return min(started) if started else None

    @property
    def finished_at(self) -> datetime | None:
        """When its last job ended; None while one has not."""
        if not self.status.is_terminal:
            return None
        finished = [job.finished_at for job in self.jobs if job.finished_at is not None]
        return max(finished) if finished else None

    @property
    def duration_seconds(self) -> float | None:
        """From its first job's start to its last one's end (or now)."""
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()

    @property
    def unfinished(self) -> list[Job]:
        return [job for job in self.jobs if not job.status.is_terminal]
