"""Retention: what the server stops keeping, and when.

Finished jobs older than CI_RETENTION_DAYS (by their end), and those past the
CI_MAX_JOBS_KEPT latest, go with everything they own: their events, test results and
artifact listings (one store transaction per batch, `JobStore.delete_jobs`), and their
blobs (artifacts, an upload left over), deleted first, so that no blob outlives its
listing. A queued or running job is never touched: the store only ever hands out and
deletes finished ones. Environment images (this server's own, `ci.owner`) that no job used
for CI_ENV_MAX_AGE_DAYS go too: their last use is in the store (`record_environment_use`,
by the pipeline's EnvironmentCache), else their creation.

`Pruner` does it every CI_PRUNE_INTERVAL_SECONDS in every process, a batch of BATCH jobs at a
time with a pause between batches and at most MAX_BATCHES per round, so that a backlog never
stalls the API; `ci-admin prune [--dry-run]` does it all at once, by hand. Several
processes pruning at once only delete the same rows twice, which is no error.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ci_server.models import Job, utcnow
from ci_server.periodic import cancel_all, start_every
from ci_server.runner.executor import Executor, ExecutorError
from ci_server.settings import Settings
from ci_server.store.blobs import BlobStore, artifact_key
from ci_server.store.repository import JobStore
from ci_server.uploads import release_upload

logger = logging.getLogger(__name__)

BATCH = 20
"""Jobs removed per step: a step is a few statements, each bounded by this many jobs."""
MAX_BATCHES = 50
"""Steps per round of the periodic task; the rest waits for the next round."""
PAUSE_SECONDS = 0.05
"""Between steps: other requests get the store (SQLite's one connection) meanwhile."""
DRY_RUN_LIMIT = 100_000


@dataclass
class Pruned:
    """What a round removed (or, dry, would remove)."""

    jobs: list[Job] = field(default_factory=list)
    blobs: int = 0
    images: list[str] = field(default_factory=list)


def _cutoff(settings: Settings, now: datetime) -> datetime:
    """Jobs that ended before this go; with no age limit, none goes for its age."""
    if settings.retention_days <= 0:
        return datetime(1970, 1, 1, tzinfo=UTC)
    return now - timedelta(days=settings.retention_days)


async def prune_jobs(
    store: JobStore,
    blobs: BlobStore,
    settings: Settings,
    *,
    dry_run: bool = False,
    max_batches: int | None = None,
    now: datetime | None = None,
) -> Pruned:
    """Remove the finished jobs retention no longer keeps, with all they own."""
    pruned = Pruned()
    if settings.retention_days <= 0 and settings.max_jobs_kept <= 0:
        return pruned
    cutoff = _cutoff(settings, now or utcnow())
    keep = settings.max_jobs_kept
    if dry_run:
        pruned.jobs = await store.prunable_jobs(
            finished_before=cutoff, keep_newest=keep, limit=DRY_RUN_LIMIT
        )
        for job in pruned.jobs:
            pruned.blobs += len(await store.artifacts(job.id))
        return pruned
    batches = 0
    while max_batches is None or batches < max_batches:
        batches += 1
        jobs = await store.prunable_jobs(finished_before=cutoff, keep_newest=keep, limit=BATCH)
        for job in jobs:
            pruned.blobs += await _delete_blobs(store, blobs, job)
        deleted = set(await store.delete_jobs([job.id for job in jobs]))
        pruned.jobs += [job for job in jobs if job.id in deleted]
        if len(jobs) < BATCH:
            break
        await asyncio.sleep(PAUSE_SECONDS)
    return pruned


async def _delete_blobs(store: JobStore, blobs: BlobStore, job: Job) -> int:
    """Delete the job's artifacts' blobs and its upload if one was left (a group's, only
    once no job of the group waits for it); how many artifacts."""
    artifacts = await store.artifacts(job.id)
    for artifact in artifacts:
        await blobs.delete(artifact_key(job.id, artifact.position))
    await release_upload(store, blobs, job)
    return len(artifacts)


async def prune_environments(
    store: JobStore,
    executor: Executor,
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[str]:
    """Remove this server's environment images that no job used for CI_ENV_MAX_AGE_DAYS;
    their tags. One still in use by a container stays (the engine refuses): next round."""
    if settings.env_max_age_days <= 0:
        return []
    cutoff = (now or utcnow()) - timedelta(days=settings.env_max_age_days)
    uses = await store.environment_uses()
    stale = []
    for image in await executor.environment_images():
        created = datetime.fromtimestamp(image.created, UTC)
        if max(uses.get(image.tag, created), created) < cutoff:
            stale.append(image.tag)
    if dry_run:
        return stale
    removed = []
    for tag in stale:
        try:
            await executor.remove_image(tag)
        except ExecutorError as e:
            logger.warning("could not remove environment image %s: %s", tag, e)
            continue
        removed.append(tag)
    if removed:
        await store.forget_environments(removed)
    return removed


class Pruner:
    """Prunes every `prune_interval_seconds` for as long as it runs; with an executor (a
    process that runs jobs), its engine's stale environment images too."""

    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        settings: Settings,
        executor: Executor | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.settings = settings
        self.executor = executor
        self._task: asyncio.Task[None] | None = None

    async def prune(self) -> Pruned:
        pruned = await prune_jobs(self.store, self.blobs, self.settings, max_batches=MAX_BATCHES)
        if self.executor is not None:
            pruned.images = await prune_environments(self.store, self.executor, self.settings)
        if pruned.jobs or pruned.images:
            logger.info(
                "retention: removed %d job(s), %d artifact(s), %d environment image(s)",
                len(pruned.jobs),
                pruned.blobs,
                len(pruned.images),
            )
        return pruned

    async def __aenter__(self) -> Pruner:
        self._task = start_every(self.settings.prune_interval_seconds, self.prune, "retention")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
