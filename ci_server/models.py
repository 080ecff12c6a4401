"""The domain: jobs, their states and their events. Free of storage and HTTP."""

from __future__ import annotations

import dataclasses
import enum
import uuid
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


class InvalidUpload(CIError):
    """The uploaded project cannot be accepted (not a zip, unsafe entries, too big...)."""


class UploadTooLarge(InvalidUpload):
    pass


class StorageFailure(CIError):
    """The server could not write what it must keep (a full disk, most likely)."""


class TestOutcome(enum.StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class TestResult:
    node_id: str
    outcome: TestOutcome
    duration_seconds: float
    message: str | None = None
    """The failure's one-line message (for failed, errored and skipped tests)."""
    details: str | None = None
    """The failure's traceback, cut to a few KB."""


@dataclass(frozen=True, slots=True)
class TestSummary:
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, results: list[TestResult]) -> TestSummary:
        counts = {outcome: 0 for outcome in TestOutcome}
        for result in results:
            counts[result.outcome] += 1
        return cls(
            passed=counts[TestOutcome.PASSED],
            failed=counts[TestOutcome.FAILED],
            errors=counts[TestOutcome.ERROR],
            skipped=counts[TestOutcome.SKIPPED],
        )

    @property
    def total(self) -> int:
        return self.passed + self.failed + self.errors + self.skipped


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

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class JobEvent:
    job_id: str
    seq: int
    type: EventType
    data: dict[str, Any]
    time: datetime = field(default_factory=utcnow)
