"""The one-process mode without HTTP: a JobService, a Worker, an EventHub and a Sweeper on
one store, wired as app.py wires them, with a FakeExecutor in place of Docker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ci_server.events import EventHub
from ci_server.jobs import JobService, JobView
from ci_server.models import EventType, Job, JobEvent
from ci_server.settings import Settings
from ci_server.store.blobs import BlobStore
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.memory import MemoryStore
from ci_server.store.repository import Store
from ci_server.users import ANONYMOUS_ADMIN, User
from ci_server.worker.loop import Worker
from ci_server.worker.recovery import Sweeper
from tests.fakes import PASSING_PROJECT, FakeExecutor, wait_until, write_zip

IMAGE = "runner:test"
WORKER = "test-worker"


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        store: Store,
        hub: EventHub,
        service: JobService,
        worker: Worker | None,
        executor: FakeExecutor,
        blobs: BlobStore,
    ) -> None:
        self.tmp_path = tmp_path
        self.store = store
        self.hub = hub
        self.service = service
        self._worker = worker
        self.executor = executor
        self.blobs = blobs

    @property
    def worker(self) -> Worker:
        assert self._worker is not None, "this harness runs no worker"
        return self._worker

    async def submit(
        self,
        files: Mapping[str, str | bytes] = PASSING_PROJECT,
        *,
        user: User = ANONYMOUS_ADMIN,
        **options: Any,
    ) -> Job:
        upload = write_zip(self.tmp_path / "uploads-in" / f"{uuid.uuid4().hex}.zip", files)
        with upload.open("rb") as archive:
            view = await self.service.submit(user, archive, **options)
        assert isinstance(view, JobView), "a lone job"
        return view.job

    async def events_until_end(self, job_id: str, after_seq: int = 0) -> list[JobEvent]:
        events: list[JobEvent] = []
        async with asyncio.timeout(10):
            async for event in self.hub.stream(job_id, after_seq):
                events.append(event)
        assert events[-1].type is EventType.END
        return events

    async def finished(self, job_id: str) -> Job:
        """Wait for the job's END event; return the job as stored."""
        await self.events_until_end(job_id)
        job = await self.store.get_job(job_id)
        assert job.status.is_terminal
        return job

    async def wait_running(self, *job_ids: str) -> None:
        await wait_until(lambda: set(job_ids) <= self.executor.running, what=f"{job_ids} running")

    async def one_running_one_queued(self) -> tuple[Job, Job]:
        """Two jobs, the first one running (held by the executor's gate), the second waiting."""
        first, second = await self.submit(), await self.submit()
        await self.wait_running(first.id)
        return first, second

    async def uploads_removed(self) -> None:
        # The upload is deleted just after the END event: wait for it.
        async def none_left() -> bool:
            return await self.blobs.list_blobs() == []

        await wait_until(none_left, what="uploads removed")


def blob_store(settings: Settings) -> FileBlobStore:
    """The uploads of the processes of one test (one host): a folder of its data dir."""
    return FileBlobStore(settings.resolved_data_dir / "blobs")


def settings_for(tmp_path: Path, **settings: Any) -> Settings:
    settings.setdefault("max_concurrent_jobs", 1)
    settings.setdefault("worker_name", WORKER)
    settings.setdefault("worker_grace", 0)
    return Settings(
        db_path=tmp_path / "db", data_dir=tmp_path / "data", runner_image=IMAGE, **settings
    )


@asynccontextmanager
async def harness(
    tmp_path: Path,
    executor: FakeExecutor | None = None,
    *,
    store: Store | None = None,
    worker: bool = True,
    **settings: Any,
) -> AsyncIterator[Harness]:
    """The parts of one process on `store` (a new in-memory one by default), the worker
    named WORKER running one job at a time unless `max_concurrent_jobs` says otherwise."""
    executor = executor or FakeExecutor()
    store = store or MemoryStore()
    config = settings_for(tmp_path, **settings)
    async with contextlib.AsyncExitStack() as stack:
        blobs = await stack.enter_async_context(blob_store(config))
        hub = await stack.enter_async_context(EventHub(store, flush_interval=0.02))
        service = await stack.enter_async_context(JobService(store, hub, blobs, config))
        running = None
        if worker:
            running = await stack.enter_async_context(Worker(store, hub, executor, blobs, config))
        await stack.enter_async_context(
            Sweeper(store, hub, blobs, config, config.worker_name if worker else None)
        )
        yield Harness(tmp_path, store, hub, service, running, executor, blobs)
