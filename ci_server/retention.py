"""Retention: what the server stops keeping, and when.

Finished jobs older than CI_RETENTION_DAYS (by their end), and those past the
CI_MAX_JOBS_KEPT latest, go with everything they own: their events, test results and
artifact listings (one store transaction per batch, `JobStore.delete_jobs`), and their
blobs (artifacts, an upload left over), deleted first, so that no blob outlives its
listing. A queued or running job is never touched: the store only ever hands out and
deletes finished ones. Artifact blobs left with no listing (their job was cancelled, or its
worker died, while they were being stored) go too, once their job has ended or is gone:
retention goes by listings and would never find them. Environment images (this server's
own, `ci.owner`) that no job used for CI_ENV_MAX_AGE_DAYS go too: their last use is in the
store (`record_environment_use`, by the pipeline's EnvironmentCache), else their creation.

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

from ci_server.models import Job, JobNotFound, utcnow
from ci_server.periodic import cancel_all, start_every
from ci_server.runner.executor import Executor, ExecutorError
from ci_server.settings import Settings
from ci_server.store.blobs import CLEANUP_GRACE, BlobStore, artifact_key, parse_artifact_key
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
    orphans: list[str] = field(default_factory=list)
    """Keys of artifact blobs no listing had."""
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


async def prune_orphan_artifacts(
    store: JobStore,
    blobs: BlobStore,
    *,
    dry_run: bool = False,
    max_batches: int | None = None,
    now: datetime | None = None,
) -> list[str]:
    """Delete the artifact blobs that no listing names, of jobs that ended or are gone;
    their keys. A queued or running job's are left (its artifacts may be being stored),
    and so is any blob stored within CLEANUP_GRACE. BATCH jobs are looked up a step."""
    before = (now or utcnow()) - CLEANUP_GRACE
    by_job: dict[str, list[tuple[str, int]]] = {}
    for blob in await blobs.list_blobs():
        parsed = parse_artifact_key(blob.key)
        if parsed is not None and blob.stored_at < before:
            by_job.setdefault(parsed[0], []).append((blob.key, parsed[1]))
    job_ids = list(by_job)
    orphans: list[str] = []
    for batches, start in enumerate(range(0, len(job_ids), BATCH)):
        if max_batches is not None and batches >= max_batches:
            break
        if batches:
            await asyncio.sleep(PAUSE_SECONDS)
        for job_id in job_ids[start : start + BATCH]:
            listed = await _listed_positions(store, job_id)
            if listed is None:
                continue
            doomed = [key for key, position in by_job[job_id] if position not in listed]
            if not dry_run:
                for key in doomed:
                    await blobs.delete(key)
            orphans += doomed
    return orphans


async def _listed_positions(store: JobStore, job_id: str) -> set[int] | None:
    """The positions the job's artifact listing has (none for a job gone); None while the
    job is queued or running."""
    try:
        job = await store.get_job(job_id)
    except JobNotFound:
        return set()
    if not job.status.is_terminal:
        return None
    return {artifact.position for artifact in await store.artifacts(job_id)}


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
        pruned.orphans = await prune_orphan_artifacts(
            self.store, self.blobs, max_batches=MAX_BATCHES
        )
        if self.executor is not None:
            pruned.images = await prune_environments(self.store, self.executor, self.settings)
        if pruned.jobs or pruned.orphans or pruned.images:
            logger.info(
                "retention: removed %d job(s), %d artifact(s), %d orphaned artifact(s), "
                "%d environment image(s)",
                len(pruned.jobs),
                pruned.blobs,
                len(pruned.orphans),
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
