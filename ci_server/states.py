"""The job state machine: the one place that knows which transitions are legal.

The store only performs compare-and-set; it never decides what a job may become.
"""

from __future__ import annotations

from ci_server.models import InvalidTransition, Job, JobStatus, utcnow

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.ERROR}),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.TIMED_OUT,
            JobStatus.ERROR,
        }
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.TIMED_OUT: frozenset(),
    JobStatus.ERROR: frozenset(),
}


def can_transition(current: JobStatus, wanted: JobStatus) -> bool:
    return wanted in ALLOWED_TRANSITIONS[current]


def transition(
    job: Job, wanted: JobStatus, *, exit_code: int | None = None, reason: str | None = None
) -> Job:
    """Return `job` moved to `wanted`, stamping start/end times; raise if the move is illegal."""
    if not can_transition(job.status, wanted):
        raise InvalidTransition(job.id, job.status, wanted)
    now = utcnow()
    changes: dict[str, object] = {"status": wanted}
    if wanted is JobStatus.RUNNING:
        changes["started_at"] = now
    if wanted.is_terminal:
        changes["finished_at"] = now
        changes["exit_code"] = exit_code
        changes["reason"] = reason
    return job.replace(**changes)


def claim(job: Job, worker: str) -> Job:
    """Return queued `job` as `worker` takes it: running from now on, run by `worker`."""
    return transition(job, JobStatus.RUNNING).replace(worker=worker)
