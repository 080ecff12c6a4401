"""The job state machine: which moves are legal and what each move stamps on the job."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from ci_server.models import InvalidTransition, Job, JobStatus, utcnow
from ci_server.states import can_transition, transition

Q, R = JobStatus.QUEUED, JobStatus.RUNNING
TERMINAL = [
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
    JobStatus.TIMED_OUT,
    JobStatus.ERROR,
]
# Written out by hand (not read from ci_server.states) so a change there must be deliberate.
LEGAL = {
    (Q, R),
    (Q, JobStatus.CANCELLED),
    (Q, JobStatus.ERROR),
    *((R, status) for status in TERMINAL),
}
ALL_PAIRS = list(itertools.product(JobStatus, repeat=2))


def job_in(status: JobStatus) -> Job:
    job = Job(id="0123456789ab")
    if status is Q:
        return job
    running = transition(job, R)
    return running if status is R else transition(running, status)


@pytest.mark.parametrize(("current", "wanted"), sorted(LEGAL))
def test_legal_transition_moves_the_job(current: JobStatus, wanted: JobStatus) -> None:
    assert can_transition(current, wanted)
    moved = transition(job_in(current), wanted)
    assert moved.status is wanted


@pytest.mark.parametrize(("current", "wanted"), [p for p in ALL_PAIRS if p not in LEGAL])
def test_illegal_transition_raises(current: JobStatus, wanted: JobStatus) -> None:
    assert not can_transition(current, wanted)
    job = job_in(current)
    with pytest.raises(InvalidTransition) as raised:
        transition(job, wanted)
    assert raised.value.current is current
    assert raised.value.wanted is wanted
    assert str(current) in str(raised.value)
    assert str(wanted) in str(raised.value)


@pytest.mark.parametrize("status", TERMINAL)
def test_terminal_states_have_no_way_out(status: JobStatus) -> None:
    assert status.is_terminal
    assert [wanted for wanted in JobStatus if can_transition(status, wanted)] == []


def test_only_queued_and_running_are_not_terminal() -> None:
    assert [status for status in JobStatus if not status.is_terminal] == [Q, R]


def test_starting_stamps_started_at_only() -> None:
    queued = Job(id="0123456789ab")
    before = utcnow()
    running = transition(queued, R)
    after = utcnow()
    assert running.started_at is not None
    assert before <= running.started_at <= after
    assert running.finished_at is None
    assert running.success is None
    assert queued.status is Q and queued.started_at is None  # the original is untouched


def test_finishing_stamps_finished_at_exit_code_and_reason() -> None:
    running = transition(Job(id="0123456789ab"), R)
    failed = transition(running, JobStatus.FAILED, exit_code=1, reason="2 tests failed")
    assert failed.started_at == running.started_at
    assert failed.finished_at is not None
    assert running.started_at is not None
    assert failed.finished_at >= running.started_at
    assert failed.exit_code == 1
    assert failed.reason == "2 tests failed"
    assert failed.success is False
    duration = failed.duration_seconds
    assert duration is not None and duration >= 0


def test_success_is_true_only_for_succeeded() -> None:
    running = transition(Job(id="0123456789ab"), R)
    assert transition(running, JobStatus.SUCCEEDED, exit_code=0).success is True
    for status in TERMINAL:
        if status is not JobStatus.SUCCEEDED:
            assert transition(running, status).success is False


def test_cancelling_a_queued_job_never_starts_it() -> None:
    cancelled = transition(Job(id="0123456789ab"), JobStatus.CANCELLED, reason="cancelled by user")
    assert cancelled.started_at is None
    assert cancelled.finished_at is not None
    assert cancelled.reason == "cancelled by user"
    assert cancelled.duration_seconds is None


def test_duration_of_a_finished_job_is_end_minus_start() -> None:
    start = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    job = Job(
        id="0123456789ab",
        status=JobStatus.SUCCEEDED,
        started_at=start,
        finished_at=start + timedelta(seconds=90, milliseconds=500),
    )
    assert job.duration_seconds == 90.5
