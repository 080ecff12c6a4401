"""Failed first: what the project's last finished run says a new job should run first.

A job's owner and project name its history (two users' `app` are two projects). The tests
that failed or errored in the latest finished job of that project that ran tests (with the
other jobs of its group, if it had one: each shard ran a part) are fed to pytest's cache
provider, so that its `--ff` runs them first (its `--lf`, only them).

Every job of a group must be told the same (a shard's `--lf` narrows the suite before it
splits it), so a group's jobs look only at `settled_jobs`: what had ended when the group was
created, whenever each of them starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ci_server.models import FAILING_OUTCOMES, Job
from ci_server.store.repository import JobStore

JOBS_LOOKED_AT = 100
"""How many of the project's latest jobs are searched for a finished one."""
MAX_LAST_FAILED = 5000
MAX_LAST_FAILED_CHARS = 64 * 1024
"""The most failures fed back, and their node ids' total size: they travel in the job's
script, one argument of `sh -c` (128 KiB at most on Linux)."""


@dataclass(frozen=True, slots=True)
class LastFailed:
    job_id: str
    """The project's last finished job, whose failures these are."""
    node_ids: tuple[str, ...]


async def last_failed(store: JobStore, job: Job) -> LastFailed | None:
    """The failures of the latest finished run of `job`'s project that ran tests, other
    than `job`; None when there is none (or `job` has no owner or project)."""
    if job.owner_id is None or job.project is None:
        return None
    if job.group_id is not None:
        candidates = await settled_jobs(store, job)
    else:
        recent = await store.list_jobs(
            limit=JOBS_LOOKED_AT, owner_id=job.owner_id, project=job.project
        )
        candidates = [
            other
            for other in recent
            if other.id != job.id and other.status.is_terminal and other.summary is not None
        ]
    if not candidates:
        return None
    latest = candidates[0]
    run = [other for other in candidates if _same_group(latest, other)] or [latest]
    node_ids: list[str] = []
    for one in run:
        failed = await store.test_results(one.id, outcomes=FAILING_OUTCOMES, limit=MAX_LAST_FAILED)
        node_ids += (result.node_id for result in failed)
    return LastFailed(latest.id, _within_size(node_ids))


async def settled_jobs(store: JobStore, job: Job) -> list[Job]:
    """The jobs of `job`'s project, created before it and not of its group, that ran tests
    and had ended when its group (or `job` alone) was created, the latest first. Every job
    of a group gets the same list whenever it starts: what its own group's jobs record, and
    whatever ends meanwhile, is for the next."""
    if job.owner_id is None or job.project is None:
        return []
    earlier = await store.list_jobs(
        limit=JOBS_LOOKED_AT, before=job.id, owner_id=job.owner_id, project=job.project
    )
    siblings = {other.id: other.created_at for other in earlier if _same_group(job, other)}
    cutoff = min(siblings.values(), default=job.created_at)
    return [
        other
        for other in earlier
        if other.id not in siblings
        and other.summary is not None
        and other.finished_at is not None
        and other.finished_at <= cutoff
    ]


def _same_group(job: Job, other: Job) -> bool:
    return job.group_id is not None and other.group_id == job.group_id


def _within_size(node_ids: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    size = 0
    for node_id in node_ids:
        size += len(node_id) + 10  # its JSON quotes, `: true` and separator
        if size > MAX_LAST_FAILED_CHARS:
            break
        kept.append(node_id)
    return tuple(kept)
