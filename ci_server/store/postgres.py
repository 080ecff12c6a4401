"""The PostgreSQL Store, through asyncpg and its connection pool.

Several processes (API replicas, workers, `ci-admin`) share one database: every write is
one statement or one transaction, and the claim of a queued job is a single UPDATE whose
row is chosen with `FOR UPDATE SKIP LOCKED`, so two claimers never take the same job and
never wait on each other. The schema is migrated at open, under an advisory lock.

Signals cross processes: a write that signals sends NOTIFY in its own transaction (so the
signal arrives once the rows are visible, and never for a write rolled back), at most once
per job per batch of events. Each process LISTENs on one connection of its own
(`_Notifications`), opened at the first `listen` and opened again when it drops; its own
writes reach it that way too. A store made with `listen=False` (a pooler that cannot LISTEN)
hears only its own writes, and its listeners' slow polls do the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ci_server.models import (
    Artifact,
    EventType,
    Job,
    JobEvent,
    JobNotFound,
    JobStatus,
    TestHistory,
    TestOutcome,
    TestResult,
    TestSummary,
    WorkerInfo,
)
from ci_server.store.columns import (
    JOB_COLUMN_NAMES,
    JOB_COLUMNS,
    KEY_COLUMNS,
    LIFECYCLE_COLUMNS,
    RESULT_COLUMNS,
    SESSION_COLUMNS,
    USER_COLUMNS,
    result_of_row,
)
from ci_server.store.repository import (
    FINISHED_STATUSES,
    HISTORY_JOBS,
    MAX_HISTORY_RUNS,
    WORKER_PLACEHOLDER,
    Store,
    claim_template,
    histories_of,
)
from ci_server.store.signals import Listener, Signal, SignalKind
from ci_server.users import (
    ApiKey,
    ApiKeyNotFound,
    EmailTaken,
    Session,
    SessionNotFound,
    User,
    UserNotFound,
)

# Each entry migrates the schema from version i to i + 1 (a row in schema_migrations).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        exit_code INTEGER,
        reason TEXT,
        summary JSON,
        worker TEXT,
        created_at TIMESTAMPTZ NOT NULL,
        timeout_seconds DOUBLE PRECISION NOT NULL,
        pytest_args TEXT[] NOT NULL,
        no_cache BOOLEAN NOT NULL,
        owner_id TEXT
    );
    CREATE INDEX jobs_by_created ON jobs (created_at, id);
    CREATE INDEX jobs_by_status ON jobs (status, created_at, id);
    CREATE INDEX jobs_by_owner ON jobs (owner_id, created_at, id);
    -- JSON, not JSONB: the text comes back as written, keys in their order.
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data JSON NOT NULL,
        time TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE test_results (
        job_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        duration DOUBLE PRECISION NOT NULL,
        message TEXT,
        details TEXT,
        PRIMARY KEY (job_id, position)
    );
    -- `ci show` pages through a job's failures only (GET /jobs/{id}/tests?outcome=failed).
    CREATE INDEX test_results_by_outcome ON test_results (job_id, outcome, position);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL CONSTRAINT users_email_unique UNIQUE,
        is_admin BOOLEAN NOT NULL,
        active BOOLEAN NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        revoked_at TIMESTAMPTZ,
        last_used_at TIMESTAMPTZ
    );
    CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at);
    """,
    # The blob store (store/blobs_postgres.py): a blob's bytes in chunks of 1 MiB, rows
    # written in the put's one transaction. EXTERNAL: uploads are zips, no use compressing.
    """
    CREATE TABLE blobs (
        key TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        chunks INTEGER NOT NULL,
        stored_at TIMESTAMPTZ NOT NULL
    );
    CREATE TABLE blob_chunks (
        key TEXT NOT NULL REFERENCES blobs (key) ON DELETE CASCADE,
        n INTEGER NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (key, n)
    );
    ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
    """,
    # Several processes: a cancel asked of another process's worker, workers' heartbeats
    # (by the database's clock: the hosts' clocks may differ).
    """
    ALTER TABLE jobs ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
    CREATE TABLE workers (
        name TEXT PRIMARY KEY,
        max_jobs INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        heartbeat_at TIMESTAMPTZ NOT NULL,
        stopped_at TIMESTAMPTZ
    );
    """,
    # Dashboard sessions, which every API process must see (sign-out ends one everywhere).
    """
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys (id),
        csrf_token TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
    """,
    # Projects: `ci list --project` pages through one project's jobs (a user's, or anyone's).
    """
    ALTER TABLE jobs ADD COLUMN project TEXT;
    CREATE INDEX jobs_by_project ON jobs (project, created_at, id);
    CREATE INDEX jobs_by_owner_project ON jobs (owner_id, project, created_at, id);
    """,
    # Same content: a test that passed and failed on the same files is flaky (TestHistory).
    "ALTER TABLE jobs ADD COLUMN content_hash TEXT;",
    # Job groups: one submission run as several jobs (Python versions x shards).
    """
    ALTER TABLE jobs ADD COLUMN group_id TEXT;
    ALTER TABLE jobs ADD COLUMN python TEXT;
    ALTER TABLE jobs ADD COLUMN shard_index INTEGER;
    ALTER TABLE jobs ADD COLUMN shard_count INTEGER;
    CREATE INDEX jobs_by_group ON jobs (group_id) WHERE group_id IS NOT NULL;
    """,
    # Artifacts (their bytes are blobs) and retention: what prunes old jobs and images.
    """
    CREATE TABLE artifacts (
        job_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        path TEXT NOT NULL,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (job_id, position)
    );
    CREATE UNIQUE INDEX artifacts_by_path ON artifacts (job_id, path);
    CREATE INDEX jobs_by_finished ON jobs (finished_at);
    CREATE TABLE environment_uses (
        tag TEXT PRIMARY KEY,
        used_at TIMESTAMPTZ NOT NULL
    );
    """,
]

logger = logging.getLogger(__name__)
RECONNECT_SECONDS = 1.0
"""How long the listening connection waits before it connects again after losing the server."""

MIGRATION_LOCK = 0x63692D736368656D
"""The advisory lock key that serializes migrations (the bytes of "ci-schem")."""

_RESULT_COLUMNS = ("job_id", "position", "node_id", "outcome", "duration", "message", "details")


def marks(count: int, start: int = 1) -> str:
    """`$start, ..., $(start + count - 1)`: asyncpg's numbered parameters."""
    return ", ".join(f"${n}" for n in range(start, start + count))


def redacted(url: str) -> str:
    """The URL without its password, to show in messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _lifecycle_values(job: Job) -> tuple[Any, ...]:
    """The values of LIFECYCLE_COLUMNS, in that order."""
    summary = None if job.summary is None else dataclasses.asdict(job.summary)
    return (
        job.status.value,
        job.started_at,
        job.finished_at,
        job.exit_code,
        job.reason,
        summary,
        job.worker,
        job.content_hash,
    )


def _job_row(job: Job) -> tuple[Any, ...]:
    """The values of JOB_COLUMN_NAMES, in that order."""
    return (
        job.id,
        *_lifecycle_values(job),
        job.created_at,
        job.timeout_seconds,
        list(job.pytest_args),
        job.no_cache,
        job.owner_id,
        job.project,
        job.group_id,
        job.python,
        job.shard_index,
        job.shard_count,
    )


def _job_from_row(row: asyncpg.Record) -> Job:
    fields = dict(row.items())  # the columns are named as Job's fields
    fields["status"] = JobStatus(fields["status"])
    fields["pytest_args"] = tuple(fields["pytest_args"])
    if fields["summary"] is not None:
        fields["summary"] = TestSummary(**fields["summary"])
    return Job(**fields)


def _event_from_row(row: asyncpg.Record) -> JobEvent:
    return JobEvent(
        job_id=row["job_id"],
        seq=row["seq"],
        type=EventType(row["type"]),
        data=json.loads(row["data"]),
        time=row["time"],
    )


def _updated(status: str) -> bool:
    """Whether an UPDATE's command status ("UPDATE <count>") says a row changed."""
    return status.split()[-1] != "0"


async def _set_up_connection(connection: asyncpg.Connection) -> None:
    # JSON columns hold Python dicts; asyncpg would otherwise pass them as text.
    await connection.set_type_codec(
        "json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def migrate(pool: asyncpg.Pool) -> None:
    """Apply the missing MIGRATIONS in one transaction; processes that start at once (job
    and blob stores of API replicas and workers) wait for each other on the advisory lock,
    and the later ones find nothing to do."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            "version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        version = await connection.fetchval(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
        )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await connection.execute(script)
            await connection.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)


async def open_pool(url: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """A pool of connections to the database at `url`, its schema migrated."""
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, init=_set_up_connection
    )
    try:
        await migrate(pool)
    except BaseException:
        await pool.close()
        raise
    return pool


class _Notifications:
    """One connection of its own that LISTENs for this process, and connects again when it
    drops (meanwhile the listeners' slow polls stand in)."""

    def __init__(self, url: str, deliver: Callable[[Signal], None]) -> None:
        self.url = url
        self.deliver = deliver
        self._kinds: set[SignalKind] = set()
        self._connection: asyncpg.Connection | None = None
        self._listened: set[SignalKind] = set()
        self._lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def add(self, kind: SignalKind) -> None:
        """LISTEN for `kind` from now on; waits (a few seconds at most) for the connection."""
        self._kinds.add(kind)
        if self._task is None:
            self._task = asyncio.create_task(self._keep_listening(), name="pg-listen")
        await self._listen_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._connected.wait()

    async def _listen_all(self) -> None:
        async with self._lock:
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            for kind in self._kinds - self._listened:
                await connection.add_listener(kind.channel, self._on_notification)
                self._listened.add(kind)

    def _on_notification(
        self, _connection: object, _pid: int, channel: str, payload: object
    ) -> None:
        for kind in self._kinds:
            if kind.channel == channel:
                self.deliver(Signal.parse(kind, str(payload)))

    async def _keep_listening(self) -> None:
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self.url, timeout=10)
                connection.add_termination_listener(lambda _, lost=lost: lost.set())
                async with self._lock:
                    self._connection, self._listened = connection, set()
                await self._listen_all()
                self._connected.set()
                await lost.wait()
                logger.warning("lost the connection that listens for signals; connecting again")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                logger.warning("cannot listen for signals (polling meanwhile): %s", e)
            finally:
                self._connected.clear()
                await self._drop_connection()
            await asyncio.sleep(RECONNECT_SECONDS)

    async def _drop_connection(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await connection.close(timeout=2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()


class PostgresStore(Store):
    def __init__(
        self,
        url: str,
        *,
        min_connections: int = 1,
        max_connections: int = 10,
        listen: bool = True,
    ) -> None:
        super().__init__()
        self.url = url
        self.listens = listen
        self.min_connections = min_connections
        self.max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._notifications = _Notifications(url, self.signals.emit)

    def __repr__(self) -> str:
        return f"PostgresStore({redacted(self.url)!r})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self) -> None:
        self._pool = await open_pool(
            self.url, min_size=self.min_connections, max_size=self.max_connections
        )

    async def close(self) -> None:
        await self._notifications.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def listen(self, kind: SignalKind, listener: Listener) -> Callable[[], None]:
        stop = await super().listen(kind, listener)
        if self.listens:
            await self._notifications.add(kind)
        return stop

    def _signal_here(self, *signals: Signal) -> None:
        """Without LISTEN, this process's own writes still signal its listeners."""
        if not self.listens:
            for signal in signals:
                self.signals.emit(signal)

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        count = len(JOB_COLUMN_NAMES)
        # The NOTIFY goes with each insert, delivered at the commit of them all.
        rows = [
            (
                *_job_row(job),
                SignalKind.QUEUED.channel,
                Signal(SignalKind.QUEUED, job.id).payload,
                JobStatus.QUEUED.value,
            )
            for job in jobs
        ]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.executemany(
                f"WITH added AS (INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks(count)}) "
                f"RETURNING status) SELECT pg_notify(${count + 1}, ${count + 2}) FROM added "
                f"WHERE status = ${count + 3}",
                rows,
            )
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                self._signal_here(Signal(SignalKind.QUEUED, job.id))

    async def group_jobs(self, group_id: str) -> list[Job]:
        rows = await self.pool.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE group_id = $1", group_id
        )
        return [_job_from_row(row) for row in rows]

    async def get_job(self, job_id: str) -> Job:
        row = await self.pool.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    async def list_jobs(
        self,
        *,
        limit: int = 100,
        before: str | None = None,
        owner_id: str | None = None,
        project: str | None = None,
    ) -> list[Job]:
        # Keyset pagination; with an owner or a project, an index that starts with them
        # (owner_id, project, created_at, id) serves it.
        conditions: list[str] = []
        params: list[Any] = []
        if owner_id is not None:
            params.append(owner_id)
            conditions.append(f"owner_id = ${len(params)}")
        if project is not None:
            params.append(project)
            conditions.append(f"project = ${len(params)}")
        if before is not None:
            cursor_job = await self.get_job(before)
            if owner_id is not None and cursor_job.owner_id != owner_id:
                raise JobNotFound(before)
            params += [cursor_job.created_at, cursor_job.id]
            conditions.append(f"(created_at, id) < (${len(params) - 1}, ${len(params)})")
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        query = (
            f"SELECT {JOB_COLUMNS} FROM jobs {where}"
            f"ORDER BY created_at DESC, id DESC LIMIT ${len(params) + 1}"
        )
        return [_job_from_row(row) for row in await self.pool.fetch(query, *params, limit)]

    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        rows = await self.pool.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ANY($1::text[]) "
            "ORDER BY created_at, id",
            [status.value for status in statuses],
        )
        return [_job_from_row(row) for row in rows]

    async def count_jobs(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        rows = await self.pool.fetch(
            "SELECT status, COUNT(*) AS count FROM jobs WHERE status = ANY($1::text[]) "
            "GROUP BY status",
            [status.value for status in statuses],
        )
        counted = {JobStatus(row["status"]): row["count"] for row in rows}
        return {status: counted.get(status, 0) for status in statuses}

    async def update_job(self, job: Job, *, expected: JobStatus) -> bool:
        count = len(LIFECYCLE_COLUMNS)
        assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(LIFECYCLE_COLUMNS, 1))
        status = await self.pool.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ${count + 1} AND status = ${count + 2}",
            *_lifecycle_values(job),
            job.id,
            expected.value,
        )
        return _updated(status)

    async def claim_next_job(self, worker: str) -> Job | None:
        # One statement, committed at once: the subquery locks the oldest queued row that
        # no other claim holds (SKIP LOCKED: claimers never wait on each other) and
        # re-checks its status, so a job is taken exactly once; no lock outlives the claim.
        running = claim_template(worker)
        row = await self.pool.fetchrow(
            "UPDATE jobs SET status = $1, started_at = $2, worker = $3 WHERE id = ("
            "SELECT id FROM jobs WHERE status = $4 ORDER BY created_at, id "
            f"FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING {JOB_COLUMNS}",
            running.status.value,
            running.started_at,
            running.worker,
            JobStatus.QUEUED.value,
        )
        return None if row is None else _job_from_row(row)

    async def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]:
        if not job_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT id, position FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) "
            "AS position FROM jobs WHERE status = $1) queue WHERE id = ANY($2::text[])",
            JobStatus.QUEUED.value,
            list(job_ids),
        )
        return {row["id"]: row["position"] for row in rows}

    async def request_cancel(self, job_id: str) -> bool:
        row = await self.pool.fetchrow(
            "WITH marked AS (UPDATE jobs SET cancel_requested = true "
            "WHERE id = $1 AND status = $2 RETURNING id) "
            "SELECT pg_notify($3, $4) FROM marked",
            job_id,
            JobStatus.RUNNING.value,
            SignalKind.CANCEL.channel,
            Signal(SignalKind.CANCEL, job_id).payload,
        )
        if row is None:
            return False
        self._signal_here(Signal(SignalKind.CANCEL, job_id))
        return True

    async def cancel_requests(self, worker: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT id FROM jobs WHERE status = $1 AND worker = $2 AND cancel_requested",
            JobStatus.RUNNING.value,
            worker,
        )
        return [row["id"] for row in rows]

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        if not events:
            return
        last = {event.job_id: event.seq for event in events}
        signals = [Signal(SignalKind.EVENTS, job_id, seq) for job_id, seq in last.items()]
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.executemany(
                # DO NOTHING: a batch retried after a failed commit may be partly written.
                "INSERT INTO events (job_id, seq, type, data, time) VALUES ($1, $2, $3, $4, $5) "
                "ON CONFLICT DO NOTHING",
                [(e.job_id, e.seq, e.type.value, e.data, e.time) for e in events],
            )
            # One NOTIFY per job of the batch, never one per event; sent at the commit.
            await connection.execute(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                SignalKind.EVENTS.channel,
                [signal.payload for signal in signals],
            )
        self._signal_here(*signals)

    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        rows = await self.pool.fetch(
            # LIMIT NULL is no limit. data as text: the codec would decode it on the loop.
            "SELECT job_id, seq, type, data::text AS data, time FROM events "
            "WHERE job_id = $1 AND seq > $2 "
            "ORDER BY seq LIMIT $3",
            job_id,
            after_seq,
            limit,
        )
        # A page of log events may hold 16 MiB of JSON: decoded on the event loop, each
        # watcher replaying a long log stalled every request for tens of milliseconds.
        return await asyncio.to_thread(lambda: [_event_from_row(row) for row in rows])

    async def last_event_seq(self, job_id: str) -> int:
        return await self.pool.fetchval(
            "SELECT COALESCE(MAX(seq), 0) FROM events WHERE job_id = $1", job_id
        )

    async def set_test_results(self, job_id: str, results: Sequence[TestResult]) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM test_results WHERE job_id = $1", job_id)
            # COPY: a report of 100,000s of tests is one stream, not one INSERT per result.
            await connection.copy_records_to_table(
                "test_results",
                columns=_RESULT_COLUMNS,
                records=(
                    (
                        job_id,
                        r.position,
                        r.node_id,
                        r.outcome.value,
                        r.duration_seconds,
                        r.message,
                        r.details,
                    )
                    for r in results
                ),
            )

    async def test_results(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        outcomes: Collection[TestOutcome] = (),
    ) -> list[TestResult]:
        # Only the conditions asked for, so that the (job_id, outcome, position) index and
        # the primary key serve every page.
        conditions = ["job_id = $1"]
        params: list[Any] = [job_id]
        if after is not None:
            params.append(after)
            conditions.append(f"position > ${len(params)}")
        if outcomes:
            params.append([outcome.value for outcome in outcomes])
            conditions.append(f"outcome = ANY(${len(params)}::text[])")
        rows = await self.pool.fetch(
            f"SELECT {RESULT_COLUMNS} FROM test_results "
            f"WHERE {' AND '.join(conditions)} ORDER BY position LIMIT ${len(params) + 1}",
            *params,
            limit,  # LIMIT NULL is no limit
        )
        return [result_of_row(row) for row in rows]

    async def test_history(
        self, owner_id: str, project: str, *, runs: int = MAX_HISTORY_RUNS
    ) -> list[TestHistory]:
        # The latest finished jobs through the (owner_id, project, created_at, id) index,
        # then their results through the primary key; each test's newest `runs` kept.
        rows = await self.pool.fetch(
            """
            SELECT node_id, job_id, outcome, duration, content_hash FROM (
                SELECT r.node_id, r.job_id, r.outcome, r.duration, j.content_hash,
                ROW_NUMBER() OVER (
                    PARTITION BY r.node_id ORDER BY j.created_at DESC, j.id DESC
                ) AS n
                FROM (
                    SELECT id, created_at, content_hash FROM jobs
                    WHERE owner_id = $1 AND project = $2 AND status = ANY($3::text[])
                    ORDER BY created_at DESC, id DESC LIMIT $4
                ) AS j JOIN test_results AS r ON r.job_id = j.id
            ) AS numbered WHERE n <= $5 ORDER BY node_id, n
            """,
            owner_id,
            project,
            list(FINISHED_STATUSES),
            HISTORY_JOBS,
            runs,
        )
        return histories_of(tuple(row) for row in rows)

    # -- artifacts and retention -------------------------------------------------------------

    async def set_artifacts(self, job_id: str, artifacts: Sequence[Artifact]) -> None:
        async with self.pool.acquire() as connection, connection.transaction():
            await connection.execute("DELETE FROM artifacts WHERE job_id = $1", job_id)
            await connection.executemany(
                "INSERT INTO artifacts (job_id, position, path, size, sha256) "
                "VALUES ($1, $2, $3, $4, $5)",
                [(job_id, a.position, a.path, a.size, a.sha256) for a in artifacts],
            )

    async def artifacts(self, job_id: str) -> list[Artifact]:
        rows = await self.pool.fetch(
            "SELECT position, path, size, sha256 FROM artifacts WHERE job_id = $1 "
            "ORDER BY position",
            job_id,
        )
        return [Artifact(r["path"], r["size"], r["sha256"], r["position"]) for r in rows]

    async def prunable_jobs(
        self, *, finished_before: datetime, keep_newest: int = 0, limit: int = 100
    ) -> list[Job]:
        ended = "COALESCE(finished_at, created_at)"
        # Past their owner's newest `keep_newest`; none when it is 0.
        rows = await self.pool.fetch(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ANY($1::text[]) "
            f"AND ({ended} < $2 OR ($3 > 0 AND id IN ("
            "SELECT id FROM (SELECT id, ROW_NUMBER() OVER ("
            f"PARTITION BY owner_id ORDER BY {ended} DESC, id DESC) AS newest "
            "FROM jobs WHERE status = ANY($1::text[])) AS ranked WHERE newest > $3"
            f"))) ORDER BY {ended}, id LIMIT $4",
            list(FINISHED_STATUSES),
            finished_before,
            keep_newest,
            limit,
        )
        return [_job_from_row(row) for row in rows]

    async def delete_jobs(self, job_ids: Collection[str]) -> list[str]:
        if not job_ids:
            return []
        async with self.pool.acquire() as connection, connection.transaction():
            # Locked first (FOR UPDATE): a finished job stays so, and its rows go together.
            ids = await connection.fetch(
                "SELECT id FROM jobs WHERE id = ANY($1::text[]) AND status = ANY($2::text[]) "
                "FOR UPDATE",
                list(job_ids),
                list(FINISHED_STATUSES),
            )
            deleted = sorted(row["id"] for row in ids)
            for table in ("events", "test_results", "artifacts", "jobs"):
                column = "id" if table == "jobs" else "job_id"
                await connection.execute(
                    f"DELETE FROM {table} WHERE {column} = ANY($1::text[])", deleted
                )
        return deleted

    async def record_environment_use(self, tag: str, at: datetime) -> None:
        await self.pool.execute(
            "INSERT INTO environment_uses (tag, used_at) VALUES ($1, $2) ON CONFLICT (tag) "
            "DO UPDATE SET used_at = GREATEST(environment_uses.used_at, excluded.used_at)",
            tag,
            at,
        )

    async def environment_uses(self) -> dict[str, datetime]:
        rows = await self.pool.fetch("SELECT tag, used_at FROM environment_uses")
        return {row["tag"]: row["used_at"] for row in rows}

    async def forget_environments(self, tags: Collection[str]) -> None:
        await self.pool.execute(
            "DELETE FROM environment_uses WHERE tag = ANY($1::text[])", list(tags)
        )

    # -- workers ---------------------------------------------------------------------------

    async def register_worker(self, name: str, max_jobs: int) -> None:
        await self.pool.execute(
            "INSERT INTO workers (name, max_jobs, started_at, heartbeat_at) "
            "VALUES ($1, $2, now(), now()) ON CONFLICT (name) DO UPDATE SET "
            "max_jobs = excluded.max_jobs, started_at = excluded.started_at, "
            "heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
            name,
            max_jobs,
        )

    async def beat(self, name: str) -> None:
        await self.pool.execute("UPDATE workers SET heartbeat_at = now() WHERE name = $1", name)

    async def worker_stopped(self, name: str) -> None:
        await self.pool.execute("UPDATE workers SET stopped_at = now() WHERE name = $1", name)

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self.pool.fetch(
            "SELECT name, max_jobs, started_at, heartbeat_at, stopped_at, "
            "EXTRACT(EPOCH FROM now() - heartbeat_at)::float8 AS silent_seconds "
            "FROM workers ORDER BY name"
        )
        return [WorkerInfo(**dict(row.items())) for row in rows]

    async def end_jobs_of_silent_workers(self, silent_for: float, ended: Job) -> list[Job]:
        # One statement: two sweepers that pick the same row serialize on its lock, and the
        # second finds it no longer running (PostgreSQL re-checks the WHERE after the wait).
        rows = await self.pool.fetch(
            "UPDATE jobs SET status = $1, finished_at = $2, exit_code = $3, "
            "reason = replace($4, $5, worker) "
            "WHERE status = $6 AND worker IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM workers WHERE workers.name = jobs.worker "
            "AND heartbeat_at >= now() - make_interval(secs => $7)"
            f") RETURNING {JOB_COLUMNS}",
            ended.status.value,
            ended.finished_at,
            ended.exit_code,
            ended.reason,
            WORKER_PLACEHOLDER,
            JobStatus.RUNNING.value,
            silent_for,
        )
        return [_job_from_row(row) for row in rows]

    # -- users and their API keys ----------------------------------------------------------

    async def add_user(self, user: User) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES ({marks(6)})",
                user.id,
                user.name,
                user.email,
                user.is_admin,
                user.active,
                user.created_at,
            )
        except asyncpg.UniqueViolationError as e:
            if e.constraint_name == "users_email_unique":
                raise EmailTaken(user.email) from None
            raise

    async def _one_user(self, where: str, value: str, missing: str) -> User:
        row = await self.pool.fetchrow(
            f"SELECT {USER_COLUMNS} FROM users WHERE {where} = $1", value
        )
        if row is None:
            raise UserNotFound(missing)
        return User(**dict(row.items()))

    async def get_user(self, user_id: str) -> User:
        return await self._one_user("id", user_id, f"no user with id {user_id!r}")

    async def get_user_by_email(self, email: str) -> User:
        return await self._one_user("email", email, f"no user with email {email!r}")

    async def list_users(self) -> list[User]:
        rows = await self.pool.fetch(f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id")
        return [User(**dict(row.items())) for row in rows]

    async def set_user_active(self, user_id: str, active: bool) -> User:
        row = await self.pool.fetchrow(
            f"UPDATE users SET active = $1 WHERE id = $2 RETURNING {USER_COLUMNS}",
            active,
            user_id,
        )
        if row is None:
            raise UserNotFound(f"no user with id {user_id!r}")
        return User(**dict(row.items()))

    async def add_api_key(self, key: ApiKey) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({marks(7)})",
                key.id,
                key.user_id,
                key.name,
                key.hash,
                key.created_at,
                key.revoked_at,
                key.last_used_at,
            )
        except asyncpg.ForeignKeyViolationError:
            raise UserNotFound(f"no user with id {key.user_id!r}") from None

    async def get_api_key(self, key_id: str) -> ApiKey:
        row = await self.pool.fetchrow(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        if row is None:
            raise ApiKeyNotFound(f"no API key with id {key_id!r}")
        return ApiKey(**dict(row.items()))

    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        rows = await self.pool.fetch(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR user_id = $1 "
            "ORDER BY created_at, id",
            user_id,
        )
        return [ApiKey(**dict(row.items())) for row in rows]

    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKey:
        # One statement: a key revoked before keeps its first revocation time.
        row = await self.pool.fetchrow(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 "
            f"RETURNING {KEY_COLUMNS}",
            at,
            key_id,
        )
        if row is None:
            raise ApiKeyNotFound(f"no API key with id {key_id!r}")
        return ApiKey(**dict(row.items()))

    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        await self.pool.execute("UPDATE api_keys SET last_used_at = $1 WHERE id = $2", at, key_id)

    # -- dashboard sessions ----------------------------------------------------------------

    async def add_session(self, session: Session) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES ({marks(5)})",
                session.token_hash,
                session.key_id,
                session.csrf_token,
                session.created_at,
                session.expires_at,
            )
        except asyncpg.ForeignKeyViolationError:
            raise ApiKeyNotFound(f"no API key with id {session.key_id!r}") from None

    async def get_session(self, token_hash: str) -> Session:
        row = await self.pool.fetchrow(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1", token_hash
        )
        if row is None:
            raise SessionNotFound("no such session")
        return Session(**dict(row.items()))

    async def delete_session(self, token_hash: str) -> None:
        await self.pool.execute("DELETE FROM sessions WHERE token_hash = $1", token_hash)

    async def delete_expired_sessions(self, now: datetime) -> int:
        status = await self.pool.execute("DELETE FROM sessions WHERE expires_at <= $1", now)
        return int(status.split()[-1])
