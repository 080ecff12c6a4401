"""Recorded durations: each test's latest duration in its project's earlier jobs, by which a
sharded job's tests are split (runner/shard_plugin.py).

Every shard of a group must split alike, so every one reads the same jobs: the project's
`history.settled_jobs`. What the group's own shards record as they end is for the next group.
"""

from __future__ import annotations

from ci_server.history import settled_jobs
from ci_server.models import Job
from ci_server.store.repository import JobStore

MAX_JOBS_READ = 16
"""The most finished jobs whose results are read: a group's shards hold a part each."""
MAX_DURATIONS = 50_000
"""The most tests with a duration (the most results a job keeps, by default)."""


async def recorded_durations(store: JobStore, job: Job) -> dict[str, float]:
    """Each test's latest recorded duration in seconds, by node id, for `job`'s split;
    empty for a job without owner or project, or a project with no finished job."""
    durations: dict[str, float] = {}
    for read, other in enumerate(await settled_jobs(store, job), start=1):
        for result in await store.test_results(other.id, limit=MAX_DURATIONS):
            durations.setdefault(result.node_id, result.duration_seconds)
        whole_suite = other.shard_count is None
        if whole_suite or read >= MAX_JOBS_READ or len(durations) >= MAX_DURATIONS:
            break
    return durations
