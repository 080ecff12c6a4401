"""An in-memory Store: the twin of the real backends, for unit tests and experiments."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

from ci_server.models import (
    Artifact,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    TestHistory,
    TestOutcome,
    TestResult,
    WorkerInfo,
    utcnow,
)
from ci_server.states import claim
from ci_server.store.repository import (
    HISTORY_JOBS,
    MAX_HISTORY_RUNS,
    WORKER_PLACEHOLDER,
    Store,
    histories_of,
)
from ci_server.store.signals import Signal, SignalKind
from ci_server.users import (
    ApiKey,
    ApiKeyNotFound,
    EmailTaken,
    Session,
    SessionNotFound,
    User,
    UserNotFound,
)


class MemoryStore(Store):
    def __init__(self) -> None:
        super().__init__()
        self._jobs: dict[str, Job] = {}
        self._cancel_requested: set[str] = set()
        self._workers: dict[str, WorkerInfo] = {}
        self._order: list[str] = []
        self._events: dict[str, list[JobEvent]] = {}
        self._results: dict[str, list[TestResult]] = {}
        self._artifacts: dict[str, list[Artifact]] = {}
        self._environment_uses: dict[str, datetime] = {}
        self._users: dict[str, User] = {}
        self._keys: dict[str, ApiKey] = {}
        self._sessions: dict[str, Session] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        ids = [job.id for job in jobs]
        if len(set(ids)) < len(ids) or any(job_id in self._jobs for job_id in ids):
            raise ValueError(f"duplicate job id among {ids}")
        for job in jobs:
            self._jobs[job.id] = job
            self._order.append(job.id)
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                self.signals.emit(Signal(SignalKind.QUEUED, job.id))

    async def group_jobs(self, group_id: str) -> list[Job]:
        return [job for job in self._jobs.values() if job.group_id == group_id]

    async def get_job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def list_jobs(
        self,
        *,
        limit: int = 100,
        before: str | None = None,
        owner_id: str | None = None,
        project: str | None = None,
    ) -> list[Job]:
        newest_first = list(reversed(self._order))
        if before is not None:
            cursor_job = await self.get_job(before)
            if owner_id is not None and cursor_job.owner_id != owner_id:
                raise JobNotFound(before)
            newest_first = newest_first[newest_first.index(before) + 1 :]
        newest_first = [
            job_id
            for job_id in newest_first
            if (owner_id is None or self._jobs[job_id].owner_id == owner_id)
            and (project is None or self._jobs[job_id].project == project)
        ]
        return [self._jobs[job_id] for job_id in newest_first[:limit]]

    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        return [self._jobs[i] for i in self._order if self._jobs[i].status in statuses]

    async def count_jobs(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        counts = dict.fromkeys(statuses, 0)
        for job in self._jobs.values():
            if job.status in counts:
                counts[job.status] += 1
        return counts

    async def update_job(self, job: Job, *, expected: JobStatus) -> bool:
        stored = self._jobs.get(job.id)
        if stored is None or stored.status is not expected:
            return False
        self._jobs[job.id] = job
        return True

    async def claim_next_job(self, worker: str) -> Job | None:
        # No await between the look and the write: atomic on the event loop.
        queued = [job for job in self._jobs.values() if job.status is JobStatus.QUEUED]
        if not queued:
            return None
        oldest = min(queued, key=lambda job: (job.created_at, job.id))
        self._jobs[oldest.id] = claimed = claim(oldest, worker)
        return claimed

    async def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]:
        queued = sorted(
            (job for job in self._jobs.values() if job.status is JobStatus.QUEUED),
            key=lambda job: (job.created_at, job.id),
        )
        wanted = set(job_ids)
        return {job.id: n for n, job in enumerate(queued, start=1) if job.id in wanted}

    async def request_cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.RUNNING:
            return False
        self._cancel_requested.add(job_id)
        self.signals.emit(Signal(SignalKind.CANCEL, job_id))
        return True

    async def cancel_requests(self, worker: str) -> list[str]:
        return [
            job.id
            for job in self._jobs.values()
            if job.id in self._cancel_requested
            and job.status is JobStatus.RUNNING
            and job.worker == worker
        ]

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        last: dict[str, int] = {}
        for event in events:
            stored = self._events.setdefault(event.job_id, [])
            at = bisect.bisect_left(stored, event.seq, key=lambda e: e.seq)
            if at < len(stored) and stored[at].seq == event.seq:
                continue  # as the SQL stores: a seq stored already keeps its first event
            stored.insert(at, event)
            last[event.job_id] = max(event.seq, last.get(event.job_id, 0))
        for job_id, seq in last.items():
            self.signals.emit(Signal(SignalKind.EVENTS, job_id, seq))

    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        stored = self._events.get(job_id, [])
        start = bisect.bisect_right([e.seq for e in stored], after_seq)
        end = None if limit is None else start + limit
        return stored[start:end]

    async def last_event_seq(self, job_id: str) -> int:
        stored = self._events.get(job_id)
        return stored[-1].seq if stored else 0

    async def set_test_results(self, job_id: str, results: Sequence[TestResult]) -> None:
        self._results[job_id] = list(results)

    async def test_results(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        outcomes: Collection[TestOutcome] = (),
    ) -> list[TestResult]:
        chosen = (
            result
            for result in self._results.get(job_id, [])
            if (after is None or result.position > after)
            and (not outcomes or result.outcome in outcomes)
        )
        return list(itertools.islice(chosen, limit))

    async def test_history(
        self, owner_id: str, project: str, *, runs: int = MAX_HISTORY_RUNS
    ) -> list[TestHistory]:
        finished = sorted(
            (
                job
                for job in self._jobs.values()
                if job.owner_id == owner_id and job.project == project and job.status.is_terminal
            ),
            key=lambda job: (job.created_at, job.id),
            reverse=True,
        )[:HISTORY_JOBS]
        counts: dict[str, int] = {}
        rows: list[tuple[str, str, str, float, str | None]] = []
        for job in finished:
            for result in self._results.get(job.id, []):
                if counts.get(result.node_id, 0) < runs:
                    counts[result.node_id] = counts.get(result.node_id, 0) + 1
                    outcome, duration = result.outcome.value, result.duration_seconds
                    rows.append((result.node_id, job.id, outcome, duration, job.content_hash))
        return histories_of(rows)

    async def set_artifacts(self, job_id: str, artifacts: Sequence[Artifact]) -> None:
        self._artifacts[job_id] = list(artifacts)

    async def artifacts(self, job_id: str) -> list[Artifact]:
        return list(self._artifacts.get(job_id, []))

    async def prunable_jobs(
        self, *, finished_before: datetime, keep_newest: int = 0, limit: int = 100
    ) -> list[Job]:
        finished = sorted(
            (job for job in self._jobs.values() if job.status.is_terminal),
            key=lambda job: (job.finished_at or job.created_at, job.id),
        )
        kept: dict[str | None, int] = {}  # how many of each owner's newest are kept
        surplus: set[str] = set()
        for job in reversed(finished):
            kept[job.owner_id] = kept.get(job.owner_id, 0) + 1
            if 0 < keep_newest < kept[job.owner_id]:
                surplus.add(job.id)
        doomed = [
            job
            for job in finished
            if job.id in surplus or (job.finished_at or job.created_at) < finished_before
        ]
        return doomed[:limit]

    async def delete_jobs(self, job_ids: Collection[str]) -> list[str]:
        deleted = sorted(
            job_id
            for job_id in set(job_ids)
            if job_id in self._jobs and self._jobs[job_id].status.is_terminal
        )
        for job_id in deleted:
            del self._jobs[job_id]
            self._order.remove(job_id)
            self._cancel_requested.discard(job_id)
            for table in (self._events, self._results, self._artifacts):
                table.pop(job_id, None)
        return deleted

    async def record_environment_use(self, tag: str, at: datetime) -> None:
        known = self._environment_uses.get(tag)
        self._environment_uses[tag] = at if known is None else max(known, at)

    async def environment_uses(self) -> dict[str, datetime]:
        return dict(self._environment_uses)

    async def forget_environments(self, tags: Collection[str]) -> None:
        for tag in tags:
            self._environment_uses.pop(tag, None)

    async def register_worker(self, name: str, max_jobs: int) -> None:
        now = utcnow()
        self._workers[name] = WorkerInfo(name, max_jobs, now, now, 0.0)

    async def beat(self, name: str) -> None:
        if name in self._workers:
            self._workers[name] = self._workers[name].replace(heartbeat_at=utcnow())

    async def worker_stopped(self, name: str) -> None:
        if name in self._workers:
            self._workers[name] = self._workers[name].replace(stopped_at=utcnow())

    async def list_workers(self) -> list[WorkerInfo]:
        now = utcnow()
        return [
            worker.replace(silent_seconds=(now - worker.heartbeat_at).total_seconds())
            for _, worker in sorted(self._workers.items())
        ]

    async def end_jobs_of_silent_workers(self, silent_for: float, ended: Job) -> list[Job]:
        since = utcnow() - timedelta(seconds=silent_for)
        alive = {w.name for w in self._workers.values() if w.heartbeat_at >= since}
        lost = []
        for job in self._jobs.values():
            if job.status is JobStatus.RUNNING and job.worker and job.worker not in alive:
                lost.append(
                    job.replace(
                        status=ended.status,
                        finished_at=ended.finished_at,
                        exit_code=ended.exit_code,
                        reason=(ended.reason or "").replace(WORKER_PLACEHOLDER, job.worker),
                    )
                )
        for job in lost:
            self._jobs[job.id] = job
        return lost

    async def add_user(self, user: User) -> None:
        if any(u.email == user.email for u in self._users.values()):
            raise EmailTaken(user.email)
        if user.id in self._users:
            raise ValueError(f"duplicate user id {user.id}")
        self._users[user.id] = user

    async def get_user(self, user_id: str) -> User:
        try:
            return self._users[user_id]
        except KeyError:
            raise UserNotFound(f"no user with id {user_id!r}") from None

    async def get_user_by_email(self, email: str) -> User:
        for user in self._users.values():
            if user.email == email:
                return user
        raise UserNotFound(f"no user with email {email!r}")

    async def list_users(self) -> list[User]:
        return list(self._users.values())

    async def set_user_active(self, user_id: str, active: bool) -> User:
        user = (await self.get_user(user_id)).replace(active=active)
        self._users[user_id] = user
        return user

    async def add_api_key(self, key: ApiKey) -> None:
        await self.get_user(key.user_id)
        if key.id in self._keys:
            raise ValueError(f"duplicate API key id {key.id}")
        self._keys[key.id] = key

    async def get_api_key(self, key_id: str) -> ApiKey:
        try:
            return self._keys[key_id]
        except KeyError:
            raise ApiKeyNotFound(f"no API key with id {key_id!r}") from None

    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        return [k for k in self._keys.values() if user_id is None or k.user_id == user_id]

    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKey:
        key = await self.get_api_key(key_id)
        if key.revoked_at is None:
            key = self._keys[key_id] = key.replace(revoked_at=at)
        return key

    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        if key_id in self._keys:
            self._keys[key_id] = self._keys[key_id].replace(last_used_at=at)

    async def add_session(self, session: Session) -> None:
        await self.get_api_key(session.key_id)
        if session.token_hash in self._sessions:
            raise ValueError("duplicate session token")
        self._sessions[session.token_hash] = session

    async def get_session(self, token_hash: str) -> Session:
        try:
            return self._sessions[token_hash]
        except KeyError:
            raise SessionNotFound("no such session") from None

    async def delete_session(self, token_hash: str) -> None:
        self._sessions.pop(token_hash, None)

    async def delete_expired_sessions(self, now: datetime) -> int:
        expired = [h for h, session in self._sessions.items() if session.expires_at <= now]
        for token_hash in expired:
            del self._sessions[token_hash]
        return len(expired)
