"""The abstract repository for jobs and their events, users and their API keys.

Every backend (in-memory, SQLite, PostgreSQL) implements this interface and passes the
contract suites in tests/unit/test_store_contract.py and test_user_store_contract.py. A store
performs atomic compare-and-set updates and the claim of a queued job; which transitions are
legal is decided by ci_server.states, never here.
"""

from __future__ import annotations

import abc
from collections.abc import Collection, Sequence
from datetime import datetime

from ci_server.lifecycle import Lifecycle
from ci_server.models import Job, JobEvent, JobStatus, TestOutcome, TestResult
from ci_server.states import claim
from ci_server.users import ApiKey, User


class JobStore(Lifecycle):
    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def add_job(self, job: Job) -> None: ...

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """Return the job or raise JobNotFound."""

    @abc.abstractmethod
    async def list_jobs(
        self, *, limit: int = 100, before: str | None = None, owner_id: str | None = None
    ) -> list[Job]:
        """Newest first; `before` is the id of the last job of the previous page.

        With `owner_id`, only that user's jobs; `before` must then be one of them too
        (JobNotFound otherwise, as for an unknown id).
        """

    @abc.abstractmethod
    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        """Oldest first: the order in which queued jobs run."""

    @abc.abstractmethod
    async def update_job(self, job: Job, *, expected: JobStatus) -> bool:
        """Store `job` only if the stored one still has status `expected`; say if it did."""

    @abc.abstractmethod
    async def claim_next_job(self, worker: str) -> Job | None:
        """Take the oldest queued job for `worker`, atomically; None when none is queued.

        The job becomes what `states.claim` makes of it (running, started now, `worker`
        set), and no other claim, from this process or another, can take it too.
        """

    @abc.abstractmethod
    async def append_events(self, events: Sequence[JobEvent]) -> None:
        """Store a batch of events in one transaction."""

    @abc.abstractmethod
    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        """Events with seq > after_seq, in order."""

    @abc.abstractmethod
    async def last_event_seq(self, job_id: str) -> int:
        """The highest stored seq of the job, 0 when it has none."""

    @abc.abstractmethod
    async def set_test_results(self, job_id: str, results: Sequence[TestResult]) -> None:
        """Store the job's per-test results (replacing any stored before); their `position`s
        must rise."""

    @abc.abstractmethod
    async def test_results(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        outcomes: Collection[TestOutcome] = (),
    ) -> list[TestResult]:
        """By position, the order pytest ran them: those past position `after` (a page's
        last), of one of `outcomes` if any are given, at most `limit`."""

    # -- users and their API keys ----------------------------------------------------------

    @abc.abstractmethod
    async def add_user(self, user: User) -> None:
        """Raise EmailTaken if a user already has this email."""

    @abc.abstractmethod
    async def get_user(self, user_id: str) -> User:
        """Return the user or raise UserNotFound."""

    @abc.abstractmethod
    async def get_user_by_email(self, email: str) -> User:
        """Return the user or raise UserNotFound."""

    @abc.abstractmethod
    async def list_users(self) -> list[User]:
        """Oldest first."""

    @abc.abstractmethod
    async def set_user_active(self, user_id: str, active: bool) -> User:
        """Store the user's new state and return the user; UserNotFound if unknown."""

    @abc.abstractmethod
    async def add_api_key(self, key: ApiKey) -> None:
        """Raise UserNotFound if the key's user is unknown."""

    @abc.abstractmethod
    async def get_api_key(self, key_id: str) -> ApiKey:
        """Return the key or raise ApiKeyNotFound."""

    @abc.abstractmethod
    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        """Oldest first; only the user's keys when `user_id` is given."""

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKey:
        """Mark the key revoked at `at` unless it already is; return it as stored.

        ApiKeyNotFound if unknown. Only `revoked_at` changes: a concurrent `touch_api_key`
        can never bring a revoked key back.
        """

    @abc.abstractmethod
    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        """Record that the key was used at `at` (only `last_used_at` changes)."""


def claim_template(worker: str) -> Job:
    """What `states.claim` makes of a queued job, for stores that claim in one statement.

    They copy its `status`, `started_at` and `worker` (the fields a claim changes: a queued
    job has no other lifecycle value yet) onto the row they take, so the rule stays in
    states.py while the SQL sets the columns.
    """
    return claim(Job(id=""), worker)
