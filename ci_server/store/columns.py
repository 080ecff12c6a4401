"""The columns the SQL stores (SQLite, PostgreSQL) read and write, in the order they do.

Each column is named as the field of Job, User, ApiKey or Session it holds.
"""

from __future__ import annotations

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
