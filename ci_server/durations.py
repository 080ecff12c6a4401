"""Recorded durations: each test's latest duration in its project's earlier jobs, by which a
sharded job's tests are split (runner/shard_plugin.py).

Every shard of a group must split alike, so every one reads the same jobs: the project's
jobs created before it, finished before its group's first job was created, and not of its
group. What the group's own shards record as they end is for the next group.
"""

from __future__ import annotations

from ci_server.models import Job
from ci_server.store.repository import JobStore

JOBS_LOOKED_AT = 100
"""How many of the project's jobs before this one are searched for finished ones."""
MAX_JOBS_READ = 16
"""The most finished jobs whose results are read: a group's shards hold a part each."""
MAX_DURATIONS = 50_000
"""The most tests with a duration (the most results a job keeps, by default)."""


async def recorded_durations(store: JobStore, job: Job) -> dict[str, float]:
    """Each test's latest recorded duration in seconds, by node id, for `job`'s split;
    empty for a job without owner or project, or a project with no finished job."""
    if job.owner_id is None or job.project is None:
        return {}
    earlier = await store.list_jobs(
        limit=JOBS_LOOKED_AT, before=job.id, owner_id=job.owner_id, project=job.project
    )
    siblings = {other.id: other.created_at for other in earlier if _same_group(job, other)}
    cutoff = min(siblings.values(), default=job.created_at)
    durations: dict[str, float] = {}
    read = 0
    for other in earlier:
        finished = other.finished_at
        if other.id in siblings or other.summary is None or finished is None or finished > cutoff:
            continue
        for result in await store.test_results(other.id, limit=MAX_DURATIONS):
            durations.setdefault(result.node_id, result.duration_seconds)
        read += 1
        whole_suite = other.shard_count is None
        if whole_suite or read >= MAX_JOBS_READ or len(durations) >= MAX_DURATIONS:
            break
    return durations


def _same_group(job: Job, other: Job) -> bool:
    return job.group_id is not None and other.group_id == job.group_id
