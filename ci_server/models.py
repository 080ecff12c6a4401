"""The domain: jobs, their states and their events. Free of storage and HTTP."""

from __future__ import annotations

import dataclasses
import enum
import statistics
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    ERROR = "error"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.TIMED_OUT,
        JobStatus.ERROR,
    }
)


CANCELLED_REASON = "cancelled by user"
OWNER_DEACTIVATED_REASON = "cancelled: owner deactivated"


class EventType(enum.StrEnum):
    """What a job event carries; see the README's "Events" section."""

    STATUS = "status"  # the job moved to a new status
    LOG = "log"  # one line of output: from the container ("stdout") or from the CI ("system")
    END = "end"  # the last event of every job: final status, exit code, success


class CIError(Exception):
    """Root of every error the domain raises; the API maps each subclass to one HTTP status."""


class JobNotFound(CIError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class InvalidTransition(CIError):
    def __init__(self, job_id: str, current: JobStatus, wanted: JobStatus) -> None:
        super().__init__(f"job {job_id} is {current}, it cannot become {wanted}")
        self.current = current
        self.wanted = wanted


class JobAlreadyFinished(CIError):
    """Cancelling a job that has already ended: it stays as it was."""

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} has already finished: {job.status}")
        self.job = job


class InvalidUpload(CIError):
    """The uploaded project cannot be accepted (not a zip, unsafe entries, too big...)."""


class UploadTooLarge(InvalidUpload):
    pass


class ContentsMissing(CIError):
    """A project sent as contents names some its owner has not uploaded (or that were
    cleaned up since the question was asked): upload them, then submit again."""

    def __init__(self, hashes: list[str]) -> None:
        shown = ", ".join(hashes[:3]) + (f" and {len(hashes) - 3} more" if len(hashes) > 3 else "")
        super().__init__(f"{len(hashes)} contents are not on the server: {shown}")
        self.hashes = hashes


class StorageFailure(CIError):
    """The server could not write what it must keep (a full disk, most likely), or read it
    back (its database went away)."""


class BlobNotFound(CIError):
    """No blob (a kept upload) under this key: never stored, deleted, or its put failed."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no blob {key!r} in the blob store")
        self.key = key


class InvalidBlobKey(CIError):
    """A key the blob store refuses: it could name a path outside the store."""

    def __init__(self, key: object) -> None:
        super().__init__(
            f"blob key {key!r} is not allowed: 1 to 200 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
        self.key = key


class ArtifactNotFound(CIError):
    """No artifact at this path in a job the user may see."""

    def __init__(self, job_id: str, path: str) -> None:
        super().__init__(f"job {job_id} has no artifact {path!r}")
        self.job_id = job_id
        self.path = path


@dataclass(frozen=True, slots=True)
class Artifact:
    """A file a job left for its user: its JUnit report, or one its tests wrote that
    ci.toml's `artifacts` names. Its bytes are a blob (store/blobs.py: artifact_key)."""

    path: str
    """Relative, `/`-separated, each part a plain name (runner/artifacts.py: safe_path)."""
    size: int
    sha256: str
    """Of its bytes, in hex: what a download can be checked against."""
    position: int = 0
    """Its place in the job's listing, from 0: its blob's key."""


class TestOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"
    XFAILED = "xfailed"
    FLAKY = "flaky"
    """Failed, then passed when rerun in the same job (pytest-rerunfailures)."""


@dataclass(frozen=True, slots=True)
class TestResult:
    node_id: str
    """pytest's node id; for an error collecting a module, its path (no `::`)."""
    outcome: TestOutcome
    duration_seconds: float
    message: str | None = None
    """The failure's one-line message (for failed, errored, skipped and xfailed tests)."""
    details: str | None = None
    """The failure's traceback, cut to a few KB."""
    position: int = 0
    """Its place in the report, from 0: the order the tests ran, and the key results page by."""


@dataclass(frozen=True, slots=True)
class TestRun:
    """One outcome of a test in one finished job of its project."""

    job_id: str
    outcome: TestOutcome
    duration_seconds: float
    content_hash: str | None = None
    """What its job tested (Job.content_hash); None when unknown."""


FAILING_OUTCOMES = frozenset({TestOutcome.FAILED, TestOutcome.ERROR})
PASSING_OUTCOMES = frozenset({TestOutcome.PASSED, TestOutcome.FLAKY})
"""A flaky outcome passed in the end: it shows the content can pass."""


@dataclass(frozen=True, slots=True)
class TestHistory:
    """A test's recent runs in its project's finished jobs, newest first."""

    node_id: str
    runs: tuple[TestRun, ...]

    @property
    def failure_rate(self) -> float:
        """The share of its runs that failed or errored (0 with no runs)."""
        if not self.runs:
            return 0.0
        return sum(run.outcome in FAILING_OUTCOMES for run in self.runs) / len(self.runs)

    @property
    def flaky_runs(self) -> int:
        """How many of its runs were flaky: failed, then passed on a rerun in the same job,
        or failed on content it passed on too (runs_on_flaky_content)."""
        reruns = sum(run.outcome is TestOutcome.FLAKY for run in self.runs)
        return reruns + self.failures_on_flaky_content

    @property
    def runs_on_flaky_content(self) -> int:
        """How many of its runs were on content (Job.content_hash) it both passed and
        failed on: the same files in the same environment, so unchanged code."""
        return len(self._on_flaky_content())

    @property
    def failures_on_flaky_content(self) -> int:
        """How many of its runs failed on content it passed on too."""
        return sum(run.outcome in FAILING_OUTCOMES for run in self._on_flaky_content())

    def _on_flaky_content(self) -> list[TestRun]:
        passed = {run.content_hash for run in self.runs if run.outcome in PASSING_OUTCOMES}
        failed = {run.content_hash for run in self.runs if run.outcome in FAILING_OUTCOMES}
        both = (passed & failed) - {None}
        return [run for run in self.runs if run.content_hash in both]

    @property
    def flake_rate(self) -> float:
        """The share of its runs that were flaky (0 with no runs)."""
        return self.flaky_runs / len(self.runs) if self.runs else 0.0

    @property
    def median_duration(self) -> float:
        """The median of its runs' durations, in seconds (0 with no runs)."""
        return statistics.median(run.duration_seconds for run in self.runs) if self.runs else 0.0


COLLECTION_NOT_SAID = "not said"
"""TestSummary.collected_sha256 of a shard that did not say what it collected."""


@dataclass(frozen=True, slots=True)
class TestSummary:
    """pytest's counts of a job's tests, and what a reader must know about them."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    xfailed: int = 0
    xpassed: int = 0
    """Unexpected passes of xfail tests (not strict): pytest's report lists them as passed."""
    rerun: int = 0
    """Runs a plugin repeated (pytest-rerunfailures): not tests, not in `total`."""
    flaky: int = 0
    """Tests that failed, then passed on a rerun: they do not fail the job."""
    results_kept: int | None = None
    """How many per-test results were kept, when fewer than the report has (a limit)."""
    warning: str | None = None
    """Set when the counts contradict the job's exit code (the report is the tests' own);
    a group's, also when its shards did not collect the same tests (groups.py)."""
    collected: int | None = None
    """A shard's: how many tests it collected, before it kept its part."""
    collected_sha256: str | None = None
    """A shard's: the SHA-256 of the node ids it collected, the same in every shard of its
    group unless the collection varies; COLLECTION_NOT_SAID when the shard left no
    fingerprint fit to compare (runner/collected.py). None for a job that is not a shard
    (or from before shards said)."""

    @classmethod
    def of(cls, outcomes: Mapping[TestOutcome, int]) -> TestSummary:
        """The counts of a report's tests, by outcome."""
        return cls(
            passed=outcomes.get(TestOutcome.PASSED, 0),
            failed=outcomes.get(TestOutcome.FAILED, 0),
            errors=outcomes.get(TestOutcome.ERROR, 0),
            skipped=outcomes.get(TestOutcome.SKIPPED, 0),
            xfailed=outcomes.get(TestOutcome.XFAILED, 0),
            flaky=outcomes.get(TestOutcome.FLAKY, 0),
        )

    @property
    def total(self) -> int:
        return (
            self.passed
            + self.failed
            + self.errors
            + self.skipped
            + self.xfailed
            + self.xpassed
            + self.flaky
        )

    def checked(self, exit_code: int) -> TestSummary:
        """The summary, with a warning if it contradicts `exit_code` (pytest's).

        pytest exits 0 exactly when no test failed or errored: a report that says otherwise,
        either way, was not written by pytest alone (or not for this run).
        """
        if self.total == 0 or (exit_code == 0) == (self.failed + self.errors == 0):
            return self
        return dataclasses.replace(self, warning=f"report disagrees with exit code {exit_code}")


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: datetime = field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    reason: str | None = None
    timeout_seconds: float = 1800.0
    pytest_args: tuple[str, ...] = ()
    summary: TestSummary | None = None
    """Counts from pytest's report, once the job has run tests."""
    no_cache: bool = False
    """Rebuild the dependency environment instead of reusing it."""
    owner_id: str | None = None
    """The user who submitted it; None for jobs from before users existed (admins only)."""
    worker: str | None = None
    """The name of the worker that claimed it; None until a worker claims it."""
    project: str | None = None
    """The project it tests (naming.py), one of its owner's; None for jobs from before
    projects, and when nothing named it."""
    content_hash: str | None = None
    """What it tested: its files and environment (runner/content.py), once its tests ran;
    None before, and for jobs from before content hashes."""
    group_id: str | None = None
    """The group it belongs to (one submission run as several jobs); None for a lone job."""
    python: str | None = None
    """The Python version asked for ("3.13"); None for the server's default runner image."""
    shard_index: int | None = None
    """Which shard of the suite it runs, from 1 to shard_count; None when not sharded."""
    shard_count: int | None = None
    """How many shards its group's suite is split into; None when not sharded."""

    @property
    def success(self) -> bool | None:
        """True or False once the job has finished, None while it is queued or running."""
        if not self.status.is_terminal:
            return None
        return self.status is JobStatus.SUCCEEDED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or utcnow()
        return (end - self.started_at).total_seconds()

    @property
    def upload_key(self) -> str:
        """The blob its upload is kept under: its group's, shared by the group's jobs."""
        return self.group_id or self.id

    @property
    def label(self) -> str:
        """What tells it from the other jobs of its group ("py3.13 2/4", "py3.11", "2/4");
        empty for a job that is neither versioned nor sharded."""
        parts = []
        if self.python is not None:
            parts.append(f"py{self.python}")
        if self.shard_index is not None and self.shard_count is not None:
            parts.append(f"{self.shard_index}/{self.shard_count}")
        return " ".join(parts)

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    seq: int
    type: EventType
    data: dict[str, Any]
    time: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process as the store knows it: its last heartbeat says whether it lives."""

    name: str
    max_jobs: int
    started_at: datetime
    heartbeat_at: datetime
    silent_seconds: float
    """Seconds since its last heartbeat when it was read, by the store's clock (PostgreSQL's
    for every host: the hosts' own clocks may differ)."""
    stopped_at: datetime | None = None
    """Set when it stopped on its own (SIGTERM); None while it runs, or after a crash."""

    def replace(self, **changes: Any) -> WorkerInfo:
        return dataclasses.replace(self, **changes)
