"""The columns the SQL stores (SQLite, PostgreSQL) read and write, in the order they do.

Each column is named as the field of Job, User, ApiKey or Session it holds.
"""

from __future__ import annotations

from typing import Any, Protocol

from ci_server.models import TestOutcome, TestResult

LIFECYCLE_COLUMNS = (
    "status",
    "started_at",
    "finished_at",
    "exit_code",
    "reason",
    "summary",
    "worker",
    "content_hash",
)
"""What changes over a job's life; the other columns are fixed when it is submitted."""
JOB_COLUMN_NAMES = (
    "id",
    *LIFECYCLE_COLUMNS,
    "created_at",
    "timeout_seconds",
    "pytest_args",
    "no_cache",
    "owner_id",
    "project",
    "group_id",
    "python",
    "shard_index",
    "shard_count",
)
JOB_COLUMNS = ", ".join(JOB_COLUMN_NAMES)
USER_COLUMNS = "id, name, email, is_admin, active, created_at"
KEY_COLUMNS = "id, user_id, name, hash, created_at, revoked_at, last_used_at"
SESSION_COLUMNS = "token_hash, key_id, csrf_token, created_at, expires_at"
RESULT_COLUMNS = "position, node_id, outcome, duration, message, details"


class Row(Protocol):
    """A row as either driver gives it (sqlite3.Row, asyncpg.Record): columns by name."""

    def __getitem__(self, key: str, /) -> Any: ...


def result_of_row(row: Row) -> TestResult:
    """The TestResult a row of RESULT_COLUMNS holds."""
    return TestResult(
        node_id=row["node_id"],
        outcome=TestOutcome(row["outcome"]),
        duration_seconds=row["duration"],
        message=row["message"],
        details=row["details"],
        position=row["position"],
    )
