"""Failed first: what the project's last finished job says a new job should run first.

A job's owner and project name its history (two users' `app` are two projects). The tests
that failed or errored in the latest finished job of that project that ran tests are fed to
pytest's cache provider, so that its `--ff` runs them first (its `--lf`, only them).
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
    """The failures of the latest finished job of `job`'s project that ran tests, other
    than `job`; None when there is none (or `job` has no owner or project)."""
    if job.owner_id is None or job.project is None:
        return None
    recent = await store.list_jobs(limit=JOBS_LOOKED_AT, owner_id=job.owner_id, project=job.project)
    for earlier in recent:
        if earlier.id != job.id and earlier.status.is_terminal and earlier.summary is not None:
            failed = await store.test_results(
                earlier.id, outcomes=FAILING_OUTCOMES, limit=MAX_LAST_FAILED
            )
            return LastFailed(earlier.id, _within_size(result.node_id for result in failed))
    return None


def _within_size(node_ids: Iterable[str]) -> tuple[str, ...]:
    kept: list[str] = []
    size = 0
    for node_id in node_ids:
        size += len(node_id) + 10  # its JSON quotes, `: true` and separator
        if size > MAX_LAST_FAILED_CHARS:
            break
        kept.append(node_id)
    return tuple(kept)
