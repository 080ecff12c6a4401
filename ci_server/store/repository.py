"""The abstract repository, in two parts: JobStore (jobs, their events and test results,
the queue, the workers) and AccountStore (users, their API keys and dashboard sessions).

Every backend (in-memory, SQLite, PostgreSQL) implements both (Store) and passes the
contract suites in tests/unit/test_store_contract.py, test_worker_store_contract.py and
test_user_store_contract.py. A store performs atomic compare-and-set updates, the claim of a
queued job and the end of the jobs of silent workers; which transitions are legal is decided
by ci_server.states, never here. Its writes signal listeners (store/signals.py): the queue
and the live logs of other processes wait on those signals, not on a tight poll.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import datetime

from ci_server.lifecycle import Lifecycle
from ci_server.models import (
    TERMINAL_STATUSES,
    Artifact,
    Job,
    JobEvent,
    JobStatus,
    TestHistory,
    TestOutcome,
    TestResult,
    TestRun,
    WorkerInfo,
)
from ci_server.states import claim, transition
from ci_server.store.signals import Listener, SignalBoard, SignalKind
from ci_server.users import ApiKey, Session, User

MAX_HISTORY_RUNS = 100
"""The most runs of one test that its history holds."""
HISTORY_JOBS = 1000
"""How many of a project's latest finished jobs its test history is read from."""
FINISHED_STATUSES = tuple(sorted(status.value for status in TERMINAL_STATUSES))
"""The statuses of finished jobs, as the stores write them."""


def histories_of(rows: Iterable[tuple[str, str, str, float, str | None]]) -> list[TestHistory]:
    """Test histories from (node id, job id, outcome, duration, content hash) rows, each
    test's newest first, sorted by node id (here, not in SQL: PostgreSQL's collation may
    differ)."""
    runs: dict[str, list[TestRun]] = {}
    for node_id, job_id, outcome, duration, content_hash in rows:
        run = TestRun(job_id, TestOutcome(outcome), duration, content_hash)
        runs.setdefault(node_id, []).append(run)
    return [TestHistory(node_id, tuple(runs[node_id])) for node_id in sorted(runs)]


class JobStore(Lifecycle):
    def __init__(self) -> None:
        self.signals = SignalBoard()
        """This process's listeners; a backend emits to it what its writes signal."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise unless the store answers (for /health)."""

    async def listen(self, kind: SignalKind, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every signal of `kind` that a write sends: from this process
        (every store), and from other processes where the backend carries them (PostgreSQL).
        The function returned stops it."""
        return self.signals.add(kind, listener)

    async def add_job(self, job: Job) -> None:
        """Store a new job; a queued one signals QUEUED."""
        await self.add_jobs([job])

    @abc.abstractmethod
    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        """Store new jobs all at once (a group's: no worker may see one without the
        others); each queued one signals QUEUED."""

    @abc.abstractmethod
    async def group_jobs(self, group_id: str) -> list[Job]:
        """The jobs of a group, in no particular order; none for an unknown group."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job:
        """Return the job or raise JobNotFound."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        *,
        limit: int = 100,
        before: str | None = None,
        owner_id: str | None = None,
        project: str | None = None,
    ) -> list[Job]:
        """Newest first; `before` is the id of the last job of the previous page.

        With `owner_id`, only that user's jobs; `before` must then be one of them too
        (JobNotFound otherwise, as for an unknown id). With `project`, only the jobs of
        projects of that name (`before` may be any job: it only says where to start).
        """

    @abc.abstractmethod
    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        """Oldest first: the order in which queued jobs run."""

    @abc.abstractmethod
    async def count_jobs(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        """How many jobs have each of `statuses` (0 for none), counted by the store: what
        /metrics reports of the queue, whichever process asks."""

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
    async def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]:
        """The place in the queue of those of `job_ids` that are queued: 1 for the oldest
        queued job (the next to be claimed), n for one with n - 1 older queued jobs."""

    @abc.abstractmethod
    async def request_cancel(self, job_id: str) -> bool:
        """Mark a running job to be stopped by its worker, and signal CANCEL; False if the
        job is not running."""

    @abc.abstractmethod
    async def cancel_requests(self, worker: str) -> list[str]:
        """The ids of the running jobs of `worker` whose cancel was requested."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[JobEvent]) -> None:
        """Store a batch of events in one transaction; signal EVENTS once per job in it,
        with its highest seq, once they are stored."""

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

    @abc.abstractmethod
    async def test_history(
        self, owner_id: str, project: str, *, runs: int = MAX_HISTORY_RUNS
    ) -> list[TestHistory]:
        """Each test of `owner_id`'s `project`, by node id, with its last `runs` outcomes
        (newest first) in the project's finished jobs: at most its last HISTORY_JOBS ones,
        so that the cost stays bounded however long the project lives."""

    # -- artifacts -------------------------------------------------------------------------

    @abc.abstractmethod
    async def set_artifacts(self, job_id: str, artifacts: Sequence[Artifact]) -> None:
        """Store the listing of the job's artifacts (replacing any stored before): their
        paths are distinct, their `position`s rise. Their bytes are the blob store's."""

    @abc.abstractmethod
    async def artifacts(self, job_id: str) -> list[Artifact]:
        """The job's artifacts by position; none for an unknown job."""

    # -- retention ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def prunable_jobs(
        self, *, finished_before: datetime, keep_newest: int = 0, limit: int = 100
    ) -> list[Job]:
        """Finished jobs that retention may remove, the earliest finished first, at most
        `limit`: those finished before `finished_before`, and with `keep_newest` > 0 those
        past the `keep_newest` latest finished ones of their owner (one user's jobs never
        push another's out). Never a queued or running job."""

    @abc.abstractmethod
    async def delete_jobs(self, job_ids: Collection[str]) -> list[str]:
        """Delete those of the jobs that are finished, with their events, test results and
        artifact listings, in one transaction; return their ids (sorted). Queued and
        running jobs, and unknown ids, are left as they are."""

    @abc.abstractmethod
    async def record_environment_use(self, tag: str, at: datetime) -> None:
        """Environment image `tag` served a job at `at` (it keeps the latest time)."""

    @abc.abstractmethod
    async def environment_uses(self) -> dict[str, datetime]:
        """Each recorded environment image's last use."""

    @abc.abstractmethod
    async def forget_environments(self, tags: Collection[str]) -> None:
        """Drop the record of images removed from the engine."""

    # -- workers ---------------------------------------------------------------------------

    @abc.abstractmethod
    async def register_worker(self, name: str, max_jobs: int) -> None:
        """Record that worker `name` starts now: started and heartbeat now, not stopped."""

    @abc.abstractmethod
    async def beat(self, name: str) -> None:
        """Record a heartbeat of worker `name` now (by the store's clock)."""

    @abc.abstractmethod
    async def worker_stopped(self, name: str) -> None:
        """Record that worker `name` stopped on its own."""

    @abc.abstractmethod
    async def list_workers(self) -> list[WorkerInfo]:
        """Every worker that ever registered, by name."""

    @abc.abstractmethod
    async def end_jobs_of_silent_workers(self, silent_for: float, ended: Job) -> list[Job]:
        """End every running job whose worker has not beaten for `silent_for` seconds (by the
        store's clock), in one guarded statement, and return them as ended.

        Each becomes `ended`'s status, finish time and exit code, and its reason with
        `{worker}` replaced by the job's worker (`lost_worker_template`). A job another
        sweeper or its worker ended first is not returned: each is ended exactly once.
        """


class AccountStore(abc.ABC):
    """Users, their API keys and their dashboard sessions: what ci_server.accounts reads
    and writes, nothing of jobs."""

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

    # -- dashboard sessions ----------------------------------------------------------------

    @abc.abstractmethod
    async def add_session(self, session: Session) -> None:
        """Raise ApiKeyNotFound if the session's key is unknown."""

    @abc.abstractmethod
    async def get_session(self, token_hash: str) -> Session:
        """Return the session or raise SessionNotFound (whether it has expired is the
        caller's to judge)."""

    @abc.abstractmethod
    async def delete_session(self, token_hash: str) -> None:
        """Forget the session (signed out): every process refuses it from now on. An
        unknown one: nothing to do."""

    @abc.abstractmethod
    async def delete_expired_sessions(self, now: datetime) -> int:
        """Forget every session that expired by `now`; say how many."""


class Store(JobStore, AccountStore):
    """The whole contract a backend implements: one database holds both parts. Callers take
    the part they use (JobService a JobStore, ci_server.accounts an AccountStore)."""


def claim_template(worker: str) -> Job:
    """What `states.claim` makes of a queued job, for stores that claim in one statement.

    They copy its `status`, `started_at` and `worker` (the fields a claim changes: a queued
    job has no other lifecycle value yet) onto the row they take, so the rule stays in
    states.py while the SQL sets the columns.
    """
    return claim(Job(id=""), worker)


WORKER_PLACEHOLDER = "{worker}"


def lost_worker_template(reason: str) -> Job:
    """What `states.transition` makes of a running job that ends `error` with `reason`, for
    `end_jobs_of_silent_workers`: the stores copy its status, finished_at, exit_code and
    reason (where WORKER_PLACEHOLDER becomes the job's worker)."""
    return transition(Job(id="", status=JobStatus.RUNNING), JobStatus.ERROR, reason=reason)
