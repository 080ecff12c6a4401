"""The SQLite Store, through aiosqlite (a connection that writes, one that reads; WAL).

The server and `ci-admin` may use one database file at once: WAL and a busy timeout let
them, and every read sees the other's committed writes (a revoked key stops working at once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

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
    utcnow,
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
from ci_server.store.signals import Signal, SignalKind
from ci_server.store.sqlite_wal import WalCheckpointer
from ci_server.users import (
    ApiKey,
    ApiKeyNotFound,
    EmailTaken,
    Session,
    SessionNotFound,
    User,
    UserNotFound,
)

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        exit_code INTEGER,
        reason TEXT,
        timeout_seconds REAL NOT NULL,
        pytest_args TEXT NOT NULL
    );
    CREATE INDEX jobs_by_created ON jobs (created_at, id);
    CREATE INDEX jobs_by_status ON jobs (status, created_at);
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        time TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    """,
    """
    ALTER TABLE jobs ADD COLUMN summary TEXT;
    CREATE TABLE test_results (
        job_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        node_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        duration REAL NOT NULL,
        message TEXT,
        details TEXT,
        PRIMARY KEY (job_id, position)
    ) WITHOUT ROWID;
    """,
    "ALTER TABLE jobs ADD COLUMN no_cache INTEGER NOT NULL DEFAULT 0;",
    # Users and API keys. Jobs from before keep a NULL owner: only admins see them.
    """
    ALTER TABLE jobs ADD COLUMN owner_id TEXT;
    CREATE INDEX jobs_by_owner ON jobs (owner_id, created_at, id);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL UNIQUE,
        is_admin INTEGER NOT NULL,
        active INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users (id),
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        last_used_at TEXT
    );
    CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at);
    """,
    # `ci show` pages through a job's failures only (GET /jobs/{id}/tests?outcome=failed).
    "CREATE INDEX test_results_by_outcome ON test_results (job_id, outcome, position);",
    "ALTER TABLE jobs ADD COLUMN worker TEXT;",
    # Several processes: a cancel asked of another process's worker, workers' heartbeats.
    """
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE workers (
        name TEXT PRIMARY KEY,
        max_jobs INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        heartbeat_at TEXT NOT NULL,
        stopped_at TEXT
    );
    """,
    # Dashboard sessions, which every API process must see (sign-out ends one everywhere).
    """
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        key_id TEXT NOT NULL REFERENCES api_keys (id),
        csrf_token TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    ) WITHOUT ROWID;
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
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (job_id, position)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX artifacts_by_path ON artifacts (job_id, path);
    CREATE INDEX jobs_by_finished ON jobs (finished_at);
    CREATE TABLE environment_uses (
        tag TEXT PRIMARY KEY,
        used_at TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
]

_JOB_MARKS = ",".join("?" * len(JOB_COLUMN_NAMES))


def _time(value: datetime | None) -> str | None:
    # Fixed width, so that the text sorts in time order.
    return None if value is None else value.isoformat(timespec="microseconds")


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _lifecycle_values(job: Job) -> tuple[Any, ...]:
    """The values of LIFECYCLE_COLUMNS, in that order."""
    return (
        job.status.value,
        _time(job.started_at),
        _time(job.finished_at),
        job.exit_code,
        job.reason,
        _summary_json(job.summary),
        job.worker,
        job.content_hash,
    )


def job_row(job: Job) -> tuple[Any, ...]:
    """The values of JOB_COLUMNS, in that order."""
    return (
        job.id,
        *_lifecycle_values(job),
        _time(job.created_at),
        job.timeout_seconds,
        json.dumps(list(job.pytest_args)),
        int(job.no_cache),
        job.owner_id,
        job.project,
        job.group_id,
        job.python,
        job.shard_index,
        job.shard_count,
    )


def _summary_json(summary: TestSummary | None) -> str | None:
    return None if summary is None else json.dumps(dataclasses.asdict(summary))


def _job_from_row(row: aiosqlite.Row) -> Job:
    created_at = _parse_time(row["created_at"])
    assert created_at is not None
    return Job(
        id=row["id"],
        status=JobStatus(row["status"]),
        created_at=created_at,
        started_at=_parse_time(row["started_at"]),
        finished_at=_parse_time(row["finished_at"]),
        exit_code=row["exit_code"],
        reason=row["reason"],
        timeout_seconds=row["timeout_seconds"],
        pytest_args=tuple(json.loads(row["pytest_args"])),
        summary=TestSummary(**json.loads(row["summary"])) if row["summary"] else None,
        no_cache=bool(row["no_cache"]),
        owner_id=row["owner_id"],
        worker=row["worker"],
        project=row["project"],
        content_hash=row["content_hash"],
        group_id=row["group_id"],
        python=row["python"],
        shard_index=row["shard_index"],
        shard_count=row["shard_count"],
    )


def _created_at(row: aiosqlite.Row) -> datetime:
    created_at = _parse_time(row["created_at"])
    assert created_at is not None  # NOT NULL in the schema
    return created_at


def _user_from_row(row: aiosqlite.Row) -> User:
    return User(
        id=row["id"],
        name=row["name"],
        email=row["email"],
        is_admin=bool(row["is_admin"]),
        active=bool(row["active"]),
        created_at=_created_at(row),
    )


def _key_from_row(row: aiosqlite.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        user_id=row["user_id"],
        name=row["name"],
        hash=row["hash"],
        created_at=_created_at(row),
        revoked_at=_parse_time(row["revoked_at"]),
        last_used_at=_parse_time(row["last_used_at"]),
    )


def _session_from_row(row: aiosqlite.Row) -> Session:
    expires_at = _parse_time(row["expires_at"])
    assert expires_at is not None  # NOT NULL in the schema
    return Session(
        token_hash=row["token_hash"],
        key_id=row["key_id"],
        csrf_token=row["csrf_token"],
        created_at=_created_at(row),
        expires_at=expires_at,
    )


INSERT_PART_BYTES = 64 * 1024
"""A batch of events goes in as statements of about this much text each: the connection's one
thread serves every other query (`/health`'s too) between them, not after a whole batch."""


EventRow = tuple[str, int, str, str, str | None]
"""An events row: job_id, seq, type, data (JSON), time."""


def _parts_of(rows: list[EventRow], limit: int) -> Iterator[list[EventRow]]:
    """`rows` in consecutive parts of at most `limit` characters of data (or one row)."""
    part: list[EventRow] = []
    size = 0
    for row in rows:
        if part and size + len(row[3]) > limit:
            yield part
            part, size = [], 0
        part.append(row)
        size += len(row[3])
    if part:
        yield part


def _event_from_row(row: aiosqlite.Row) -> JobEvent:
    time = _parse_time(row["time"])
    assert time is not None
    return JobEvent(
        job_id=row["job_id"],
        seq=row["seq"],
        type=EventType(row["type"]),
        data=json.loads(row["data"]),
        time=time,
    )


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path)
    db.row_factory = aiosqlite.Row
    try:
        # The busy timeout first: switching to WAL waits on another process's migration.
        await db.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        await db.close()
        raise
    return db


WAL_SWITCH_SECONDS = 10.0


async def _use_wal(db: aiosqlite.Connection) -> None:
    """Put the database in WAL mode (it stays so, in the file). While another process makes
    the same switch on a new file, SQLite answers `database is locked` at once, without
    waiting its busy timeout (seen 1 run in 15 of four processes starting together): try
    again, for at most WAL_SWITCH_SECONDS."""
    deadline = asyncio.get_running_loop().time() + WAL_SWITCH_SECONDS
    while True:
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)  # the other process holds the lock: nothing to wait on


class SqliteStore(Store):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer = WalCheckpointer(self.path)

    @property
    def db(self) -> aiosqlite.Connection:
        """The connection that writes (and migrates)."""
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    @property
    def reader(self) -> aiosqlite.Connection:
        """The connection that reads: its own thread, so a read never waits behind a batch
        of events being written (WAL lets it read what was committed meanwhile)."""
        if self._reader is None:
            raise RuntimeError("the store is not open")
        return self._reader

    async def open(self) -> None:
        # A store that fails to open closes what it opened: an aiosqlite connection left
        # open keeps its thread, which keeps the process from exiting.
        try:
            await self._open()
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await _connect(self.path)
        await _use_wal(self._db)
        await self._db.execute("PRAGMA synchronous=NORMAL")
        # WalCheckpointer does it, on its own connection (sqlite_wal.py says why).
        await self._db.execute("PRAGMA wal_autocheckpoint=0")
        await self._migrate()
        self._reader = await _connect(self.path)
        await self._reader.execute("PRAGMA query_only=1")
        await self._checkpointer.start()

    async def _version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return row[0] if row else 0

    async def _migrate(self) -> None:
        """Apply the missing MIGRATIONS, one transaction each. Processes that open a new
        file at once (`ci-server` and `ci-worker`) queue for the write lock (IMMEDIATE):
        one that finds its migration applied meanwhile by another moves on."""
        while (version := await self._version()) < len(MIGRATIONS):
            script = MIGRATIONS[version]
            try:
                await self.db.executescript(
                    f"BEGIN IMMEDIATE; {script}; PRAGMA user_version={version + 1}; COMMIT;"
                )
            except sqlite3.OperationalError:
                await self.db.rollback()
                if await self._version() <= version:
                    raise

    async def close(self) -> None:
        await self._checkpointer.stop()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _read(self, query: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """The rows of `query` on the reading connection, all fetched in the one call on its
        thread that runs it. A statement left unfinished between calls (a cursor's execute,
        then its fetch) holds a read transaction, and every read the connection ran
        meanwhile, for any caller, saw the database as it was then: a job just added was
        not found (`JobNotFound` right after its submit, on a busy worker)."""
        return list(await self.reader.execute_fetchall(query, params))

    async def _read_one(self, query: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._read(query, params)
        return rows[0] if rows else None

    async def ping(self) -> None:
        await self._read_one("SELECT 1")

    async def add_jobs(self, jobs: Sequence[Job]) -> None:
        try:
            await self.db.executemany(
                f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({_JOB_MARKS})",
                [job_row(job) for job in jobs],
            )
            await self.db.commit()
        except sqlite3.Error:
            await self.db.rollback()
            raise
        for job in jobs:
            if job.status is JobStatus.QUEUED:
                self.signals.emit(Signal(SignalKind.QUEUED, job.id))

    async def group_jobs(self, group_id: str) -> list[Job]:
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE group_id = ?"
        return [_job_from_row(row) for row in await self._read(query, (group_id,))]

    async def get_job(self, job_id: str) -> Job:
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"
        row = await self._read_one(query, (job_id,))
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
            conditions.append("owner_id = ?")
            params.append(owner_id)
        if project is not None:
            conditions.append("project = ?")
            params.append(project)
        if before is not None:
            cursor_job = await self.get_job(before)
            if owner_id is not None and cursor_job.owner_id != owner_id:
                raise JobNotFound(before)
            conditions.append("(created_at, id) < (?, ?)")
            params += [_time(cursor_job.created_at), cursor_job.id]
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        query = f"SELECT {JOB_COLUMNS} FROM jobs {where}ORDER BY created_at DESC, id DESC LIMIT ?"
        return [_job_from_row(row) for row in await self._read(query, [*params, limit])]

    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        marks = ",".join("?" * len(statuses))
        query = f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ({marks}) ORDER BY created_at, id"
        return [_job_from_row(row) for row in await self._read(query, [s.value for s in statuses])]

    async def count_jobs(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        marks = ",".join("?" * len(statuses))
        query = f"SELECT status, COUNT(*) FROM jobs WHERE status IN ({marks}) GROUP BY status"
        counted = {
            JobStatus(status): count
            for status, count in await self._read(query, [s.value for s in statuses])
        }
        return {status: counted.get(status, 0) for status in statuses}

    async def update_job(self, job: Job, *, expected: JobStatus) -> bool:
        assignments = ", ".join(f"{column}=?" for column in LIFECYCLE_COLUMNS)
        cursor = await self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id=? AND status=?",
            (*_lifecycle_values(job), job.id, expected.value),
        )
        await self.db.commit()
        return cursor.rowcount == 1

    async def claim_next_job(self, worker: str) -> Job | None:
        # One statement: SQLite takes the write lock before it reads, so no other
        # connection (store, process) can claim between the choice and the update.
        running = claim_template(worker)
        # execute_fetchall: the statement runs to its end in one call of aiosqlite's
        # thread. Stepped in two calls, another coroutine's commit could come between, and
        # a commit while an UPDATE ... RETURNING is in progress fails.
        rows = await self.db.execute_fetchall(
            f"UPDATE jobs SET status=?, started_at=?, worker=? WHERE id = ("
            "SELECT id FROM jobs WHERE status=? ORDER BY created_at, id LIMIT 1"
            f") RETURNING {JOB_COLUMNS}",
            (
                running.status.value,
                _time(running.started_at),
                running.worker,
                JobStatus.QUEUED.value,
            ),
        )
        await self.db.commit()
        row = next(iter(rows), None)
        return None if row is None else _job_from_row(row)

    async def queue_positions(self, job_ids: Collection[str]) -> dict[str, int]:
        if not job_ids:
            return {}
        marks = ",".join("?" * len(job_ids))
        query = (
            "SELECT id, position FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) "
            f"AS position FROM jobs WHERE status = ?) WHERE id IN ({marks})"
        )
        return {
            row["id"]: row["position"]
            for row in await self._read(query, [JobStatus.QUEUED.value, *job_ids])
        }

    async def request_cancel(self, job_id: str) -> bool:
        cursor = await self.db.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?",
            (job_id, JobStatus.RUNNING.value),
        )
        await self.db.commit()
        if cursor.rowcount != 1:
            return False
        self.signals.emit(Signal(SignalKind.CANCEL, job_id))
        return True

    async def cancel_requests(self, worker: str) -> list[str]:
        query = "SELECT id FROM jobs WHERE status = ? AND worker = ? AND cancel_requested = 1"
        return [row["id"] for row in await self._read(query, (JobStatus.RUNNING.value, worker))]

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        if not events:
            return
        rows: list[EventRow] = [
            (e.job_id, e.seq, e.type.value, json.dumps(e.data), _time(e.time)) for e in events
        ]
        for part in _parts_of(rows, INSERT_PART_BYTES):
            # OR IGNORE: a batch retried after a failed commit may be partly written already.
            await self.db.executemany(
                "INSERT OR IGNORE INTO events (job_id, seq, type, data, time) VALUES (?,?,?,?,?)",
                part,
            )
        await self.db.commit()
        last = {event.job_id: event.seq for event in events}
        for job_id, seq in last.items():
            self.signals.emit(Signal(SignalKind.EVENTS, job_id, seq))

    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        query = (
            "SELECT job_id, seq, type, data, time FROM events WHERE job_id=? AND seq>? ORDER BY seq"
        )
        params: tuple[Any, ...] = (job_id, after_seq)
        if limit is not None:
            query += " LIMIT ?"
            params = (*params, limit)
        rows = await self._read(query, params)
        # A page of log events may hold 16 MiB of JSON: decoded on the event loop, each
        # watcher replaying a long log stalled every request for tens of milliseconds.
        return await asyncio.to_thread(lambda: [_event_from_row(row) for row in rows])

    async def last_event_seq(self, job_id: str) -> int:
        query = "SELECT MAX(seq) FROM events WHERE job_id=?"
        row = await self._read_one(query, (job_id,))
        return row[0] if row and row[0] is not None else 0

    async def set_test_results(self, job_id: str, results: Sequence[TestResult]) -> None:
        await self.db.execute("DELETE FROM test_results WHERE job_id=?", (job_id,))
        await self.db.executemany(
            "INSERT INTO test_results (job_id, position, node_id, outcome, duration, message, "
            "details) VALUES (?,?,?,?,?,?,?)",
            (  # a generator: aiosqlite's thread makes the rows, not the event loop
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
        await self.db.commit()

    async def test_results(
        self,
        job_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        outcomes: Collection[TestOutcome] = (),
    ) -> list[TestResult]:
        conditions: list[str] = ["job_id = ?"]
        params: list[Any] = [job_id]
        if after is not None:
            conditions.append("position > ?")
            params.append(after)
        if outcomes:
            conditions.append(f"outcome IN ({','.join('?' * len(outcomes))})")
            params += [outcome.value for outcome in outcomes]
        query = (
            f"SELECT {RESULT_COLUMNS} FROM test_results "
            f"WHERE {' AND '.join(conditions)} ORDER BY position LIMIT ?"
        )
        rows = await self._read(query, [*params, -1 if limit is None else limit])
        return [result_of_row(row) for row in rows]

    async def test_history(
        self, owner_id: str, project: str, *, runs: int = MAX_HISTORY_RUNS
    ) -> list[TestHistory]:
        # The latest finished jobs through the (owner_id, project, created_at, id) index,
        # then their results through the primary key; each test's newest `runs` kept.
        statuses = ",".join("?" * len(FINISHED_STATUSES))
        query = f"""
            SELECT node_id, job_id, outcome, duration, content_hash FROM (
                SELECT r.node_id, r.job_id, r.outcome, r.duration, j.content_hash,
                ROW_NUMBER() OVER (
                    PARTITION BY r.node_id ORDER BY j.created_at DESC, j.id DESC
                ) AS n
                FROM (
                    SELECT id, created_at, content_hash FROM jobs
                    WHERE owner_id = ? AND project = ? AND status IN ({statuses})
                    ORDER BY created_at DESC, id DESC LIMIT ?
                ) AS j JOIN test_results AS r ON r.job_id = j.id
            ) WHERE n <= ? ORDER BY node_id, n
        """
        params = [owner_id, project, *FINISHED_STATUSES, HISTORY_JOBS, runs]
        return histories_of(tuple(row) for row in await self._read(query, params))

    # -- artifacts and retention -------------------------------------------------------------

    async def set_artifacts(self, job_id: str, artifacts: Sequence[Artifact]) -> None:
        await self.db.execute("DELETE FROM artifacts WHERE job_id=?", (job_id,))
        await self.db.executemany(
            "INSERT INTO artifacts (job_id, position, path, size, sha256) VALUES (?,?,?,?,?)",
            [(job_id, a.position, a.path, a.size, a.sha256) for a in artifacts],
        )
        await self.db.commit()

    async def artifacts(self, job_id: str) -> list[Artifact]:
        query = (
            "SELECT position, path, size, sha256 FROM artifacts WHERE job_id=? ORDER BY position"
        )
        rows = await self._read(query, (job_id,))
        return [Artifact(row["path"], row["size"], row["sha256"], row["position"]) for row in rows]

    async def prunable_jobs(
        self, *, finished_before: datetime, keep_newest: int = 0, limit: int = 100
    ) -> list[Job]:
        statuses = ",".join("?" * len(FINISHED_STATUSES))
        ended = "COALESCE(finished_at, created_at)"
        # Past their owner's newest `keep_newest` (none when it is 0).
        surplus = (
            "SELECT id FROM (SELECT id, ROW_NUMBER() OVER ("
            f"PARTITION BY owner_id ORDER BY {ended} DESC, id DESC) AS newest "
            f"FROM jobs WHERE status IN ({statuses})) WHERE newest > ?"
        )
        query = (
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ({statuses}) "
            f"AND ({ended} < ? OR id IN ({surplus})) ORDER BY {ended}, id LIMIT ?"
        )
        keep = keep_newest if keep_newest > 0 else 2**62
        params = [*FINISHED_STATUSES, _time(finished_before), *FINISHED_STATUSES, keep, limit]
        return [_job_from_row(row) for row in await self._read(query, params)]

    async def delete_jobs(self, job_ids: Collection[str]) -> list[str]:
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        statuses = ",".join("?" * len(FINISHED_STATUSES))
        finished = f"SELECT id FROM jobs WHERE id IN ({marks}) AND status IN ({statuses})"
        params = [*job_ids, *FINISHED_STATUSES]
        # The children first, the jobs last: whatever commits in between (the connection
        # is shared), no row is ever left without its job, and a finished job stays so.
        for table in ("events", "test_results", "artifacts"):
            await self.db.execute(f"DELETE FROM {table} WHERE job_id IN ({finished})", params)
        rows = await self.db.execute_fetchall(
            f"DELETE FROM jobs WHERE id IN ({finished}) RETURNING id", params
        )
        await self.db.commit()
        return sorted(row[0] for row in rows)

    async def record_environment_use(self, tag: str, at: datetime) -> None:
        await self.db.execute(
            "INSERT INTO environment_uses (tag, used_at) VALUES (?, ?) ON CONFLICT (tag) "
            "DO UPDATE SET used_at = max(used_at, excluded.used_at)",
            (tag, _time(at)),
        )
        await self.db.commit()

    async def environment_uses(self) -> dict[str, datetime]:
        rows = await self._read("SELECT tag, used_at FROM environment_uses")
        return {row["tag"]: datetime.fromisoformat(row["used_at"]) for row in rows}

    async def forget_environments(self, tags: Collection[str]) -> None:
        await self.db.executemany(
            "DELETE FROM environment_uses WHERE tag = ?", [(tag,) for tag in tags]
        )
        await self.db.commit()

    # -- workers ---------------------------------------------------------------------------

    async def register_worker(self, name: str, max_jobs: int) -> None:
        now = _time(utcnow())
        await self.db.execute(
            "INSERT INTO workers (name, max_jobs, started_at, heartbeat_at) VALUES (?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET max_jobs = excluded.max_jobs, "
            "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
            "stopped_at = NULL",
            (name, max_jobs, now, now),
        )
        await self.db.commit()

    async def beat(self, name: str) -> None:
        await self.db.execute(
            "UPDATE workers SET heartbeat_at = ? WHERE name = ?", (_time(utcnow()), name)
        )
        await self.db.commit()

    async def worker_stopped(self, name: str) -> None:
        await self.db.execute(
            "UPDATE workers SET stopped_at = ? WHERE name = ?", (_time(utcnow()), name)
        )
        await self.db.commit()

    async def list_workers(self) -> list[WorkerInfo]:
        now = utcnow()
        query = "SELECT name, max_jobs, started_at, heartbeat_at, stopped_at FROM workers"
        rows = await self._read(f"{query} ORDER BY name")
        workers = []
        for row in rows:
            heartbeat_at = _parse_time(row["heartbeat_at"])
            started_at = _parse_time(row["started_at"])
            assert heartbeat_at is not None and started_at is not None  # NOT NULL
            workers.append(
                WorkerInfo(
                    name=row["name"],
                    max_jobs=row["max_jobs"],
                    started_at=started_at,
                    heartbeat_at=heartbeat_at,
                    silent_seconds=(now - heartbeat_at).total_seconds(),
                    stopped_at=_parse_time(row["stopped_at"]),
                )
            )
        return workers

    async def end_jobs_of_silent_workers(self, silent_for: float, ended: Job) -> list[Job]:
        # One statement: SQLite holds the write lock from the choice to the update.
        since = _time(utcnow() - timedelta(seconds=silent_for))
        rows = await self.db.execute_fetchall(  # in one call: see claim_next_job
            "UPDATE jobs SET status = ?, finished_at = ?, exit_code = ?, "
            "reason = replace(?, ?, worker) "
            "WHERE status = ? AND worker IS NOT NULL AND NOT EXISTS ("
            "SELECT 1 FROM workers WHERE workers.name = jobs.worker AND heartbeat_at >= ?"
            f") RETURNING {JOB_COLUMNS}",
            (
                ended.status.value,
                _time(ended.finished_at),
                ended.exit_code,
                ended.reason,
                WORKER_PLACEHOLDER,
                JobStatus.RUNNING.value,
                since,
            ),
        )
        await self.db.commit()
        return [_job_from_row(row) for row in rows]

    # -- users and their API keys ----------------------------------------------------------

    async def add_user(self, user: User) -> None:
        try:
            await self.db.execute(
                f"INSERT INTO users ({USER_COLUMNS}) VALUES (?,?,?,?,?,?)",
                (
                    user.id,
                    user.name,
                    user.email,
                    int(user.is_admin),
                    int(user.active),
                    _time(user.created_at),
                ),
            )
        except sqlite3.IntegrityError as e:
            await self.db.rollback()
            if "users.email" in str(e):
                raise EmailTaken(user.email) from None
            raise
        await self.db.commit()

    async def _one_user(self, where: str, value: str, missing: str) -> User:
        row = await self._read_one(f"SELECT {USER_COLUMNS} FROM users WHERE {where} = ?", (value,))
        if row is None:
            raise UserNotFound(missing)
        return _user_from_row(row)

    async def get_user(self, user_id: str) -> User:
        return await self._one_user("id", user_id, f"no user with id {user_id!r}")

    async def get_user_by_email(self, email: str) -> User:
        return await self._one_user("email", email, f"no user with email {email!r}")

    async def list_users(self) -> list[User]:
        query = f"SELECT {USER_COLUMNS} FROM users ORDER BY created_at, id"
        return [_user_from_row(row) for row in await self._read(query)]

    async def set_user_active(self, user_id: str, active: bool) -> User:
        await self.db.execute("UPDATE users SET active=? WHERE id=?", (int(active), user_id))
        await self.db.commit()
        return await self.get_user(user_id)

    async def add_api_key(self, key: ApiKey) -> None:
        await self.get_user(key.user_id)
        await self.db.execute(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            (
                key.id,
                key.user_id,
                key.name,
                key.hash,
                _time(key.created_at),
                _time(key.revoked_at),
                _time(key.last_used_at),
            ),
        )
        await self.db.commit()

    async def get_api_key(self, key_id: str) -> ApiKey:
        query = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"
        row = await self._read_one(query, (key_id,))
        if row is None:
            raise ApiKeyNotFound(f"no API key with id {key_id!r}")
        return _key_from_row(row)

    async def list_api_keys(self, user_id: str | None = None) -> list[ApiKey]:
        where, params = ("WHERE user_id = ? ", (user_id,)) if user_id is not None else ("", ())
        query = f"SELECT {KEY_COLUMNS} FROM api_keys {where}ORDER BY created_at, id"
        return [_key_from_row(row) for row in await self._read(query, params)]

    async def revoke_api_key(self, key_id: str, at: datetime) -> ApiKey:
        await self.db.execute(
            "UPDATE api_keys SET revoked_at=? WHERE id=? AND revoked_at IS NULL",
            (_time(at), key_id),
        )
        await self.db.commit()
        return await self.get_api_key(key_id)

    async def touch_api_key(self, key_id: str, at: datetime) -> None:
        await self.db.execute("UPDATE api_keys SET last_used_at=? WHERE id=?", (_time(at), key_id))
        await self.db.commit()

    # -- dashboard sessions ----------------------------------------------------------------

    async def add_session(self, session: Session) -> None:
        await self.get_api_key(session.key_id)
        await self.db.execute(
            f"INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?,?,?,?,?)",
            (
                session.token_hash,
                session.key_id,
                session.csrf_token,
                _time(session.created_at),
                _time(session.expires_at),
            ),
        )
        await self.db.commit()

    async def get_session(self, token_hash: str) -> Session:
        query = f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?"
        row = await self._read_one(query, (token_hash,))
        if row is None:
            raise SessionNotFound("no such session")
        return _session_from_row(row)

    async def delete_session(self, token_hash: str) -> None:
        await self.db.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))
        await self.db.commit()

    async def delete_expired_sessions(self, now: datetime) -> int:
        cursor = await self.db.execute("DELETE FROM sessions WHERE expires_at <= ?", (_time(now),))
        await self.db.commit()
        return cursor.rowcount
