"""Lost workers: their running jobs end `error`, whichever process notices first.

Every process (API replicas and workers) sweeps every `heartbeat_interval`: one guarded
statement ends the running jobs of every worker silent for `worker_timeout`
(`JobStore.end_jobs_of_silent_workers`), so that two sweepers never end a job twice, and
the sweeper that ended a job writes its end event and deletes its upload. The containers a
lost worker left are removed when it starts again (Worker.start).
"""

from __future__ import annotations

import asyncio
import logging

from ci_server.events import EventHub
from ci_server.models import Job
from ci_server.periodic import cancel_all, start_every
from ci_server.settings import Settings
from ci_server.store.blobs import BlobStore
from ci_server.store.repository import JobStore, lost_worker_template
from ci_server.uploads import release_upload

logger = logging.getLogger(__name__)

LOST_WORKER_REASON = "worker {worker} stopped responding"


async def end_jobs_of_lost_workers(
    store: JobStore, hub: EventHub, blobs: BlobStore, silent_for: float
) -> list[Job]:
    """End the running jobs of workers silent for `silent_for` seconds and delete their
    uploads; return them."""
    ended = await store.end_jobs_of_silent_workers(
        silent_for, lost_worker_template(LOST_WORKER_REASON)
    )
    for job in ended:
        logger.warning("job %s ended: %s", job.id, job.reason, extra={"job_id": job.id})
        await hub.end(job)
        await release_upload(store, blobs, job)
    return ended


class Sweeper:
    """Looks for lost workers every `heartbeat_interval`, for as long as it runs.

    `local_worker` names the worker of this process, if it has one: it beats just before
    each sweep, since a process that sweeps is alive (after a suspended laptop wakes, the
    sweep must not come before the heartbeat and end the jobs of its own worker).
    """

    def __init__(
        self,
        store: JobStore,
        hub: EventHub,
        blobs: BlobStore,
        settings: Settings,
        local_worker: str | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.blobs = blobs
        self.settings = settings
        self.local_worker = local_worker
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[Job]:
        if self.local_worker is not None:
            await self.store.beat(self.local_worker)
        return await end_jobs_of_lost_workers(
            self.store, self.hub, self.blobs, self.settings.worker_timeout
        )

    async def __aenter__(self) -> Sweeper:
        self._task = start_every(self.settings.heartbeat_interval, self.sweep, "lost-worker sweep")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
