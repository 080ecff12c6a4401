"""A worker: claims queued jobs from the store and runs them, at most `max_concurrent_jobs`
at once, on its executor.

The queue is the store: a free slot claims the oldest queued job (one statement, so that
a job is taken once whichever worker asks), and waits when none is queued until the store
signals a new one (a local signal in one process, NOTIFY on PostgreSQL) or QUEUE_POLL_SECONDS
pass. Each job runs in its own task, so that a cancel (asked here or through the store by
any API process), its timeout or a shutdown stops just that job.

The worker beats in the store every `heartbeat_interval`; one silent for `worker_timeout` is
lost, and any other process ends its running jobs (worker/recovery.py). When it starts, it
ends the jobs a previous run of it left running and removes the containers it left. When it
stops (SIGTERM), it takes no new job, lets the running ones finish within `worker_grace`
seconds, then ends the rest `error`.

A deactivated user's jobs do not run: the owner is looked up when the job is taken (the
API processes cancel the queued ones meanwhile, jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ci_server import accounts
from ci_server.contents import is_upload_key
from ci_server.events import EventHub, JobChannel
from ci_server.log_format import about_job
from ci_server.models import (
    CANCELLED_REASON,
    OWNER_DEACTIVATED_REASON,
    EventType,
    Job,
    JobStatus,
)
from ci_server.periodic import cancel_all, start_every
from ci_server.runner.executor import Executor, ExecutorError
from ci_server.scheduler import JobPipeline, Outcome
from ci_server.settings import Settings
from ci_server.states import transition
from ci_server.store.blobs import BlobStore
from ci_server.store.repository import Store
from ci_server.store.signals import Signal, SignalKind
from ci_server.uploads import release_upload

logger = logging.getLogger(__name__)

QUEUE_POLL_SECONDS = 2.0
"""How often a free worker asks for a job unasked, in case a signal was lost."""
CANCEL_POLL_SECONDS = 1.0
"""How often a worker with running jobs asks whether one of them was cancelled, likewise."""
INTERRUPTED_REASON = "interrupted by server restart"


class _RunningJob:
    def __init__(self) -> None:
        self.task: asyncio.Task[Outcome] | None = None
        self.stop_with: Outcome | None = None
        """Set when the job is stopped from outside: how it then ends."""


class Worker:
    def __init__(
        self,
        store: Store,
        hub: EventHub,
        executor: Executor,
        blobs: BlobStore,
        settings: Settings,
        *,
        interrupted_reason: str = INTERRUPTED_REASON,
    ) -> None:
        self.store = store
        self.hub = hub
        self.executor = executor
        self.blobs = blobs
        self.settings = settings
        self.name = settings.worker_name
        self.interrupted_reason = interrupted_reason
        """Why the jobs a previous run of this worker left running ended."""
        self.metrics = hub.metrics
        """The process's (its EventHub's): jobs claimed here, and the pipeline's builds."""
        self.pipeline = JobPipeline(store, executor, blobs, settings, metrics=self.metrics)
        self._slots = asyncio.Semaphore(settings.max_concurrent_jobs)
        self._queued = asyncio.Event()
        self._running: dict[str, _RunningJob] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        self._claiming: asyncio.Task[None] | None = None
        self._chores: list[asyncio.Task[None]] = []
        self._stop_listening: list[Callable[[], None]] = []

    @property
    def running(self) -> frozenset[str]:
        """The ids of the jobs it runs now."""
        return frozenset(self._running)

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.register_worker(self.name, self.settings.max_concurrent_jobs)
        await self._recover()
        self._stop_listening = [
            await self.store.listen(SignalKind.QUEUED, self._on_queued),
            await self.store.listen(SignalKind.CANCEL, self._on_cancel),
        ]
        self._claiming = asyncio.create_task(self._claim_forever(), name=f"{self.name}-claim")
        self._chores = [
            start_every(self.settings.heartbeat_interval, self._beat, f"{self.name}: heartbeat"),
            start_every(CANCEL_POLL_SECONDS, self._look_for_cancels, f"{self.name}: cancels"),
        ]

    async def stop(self, grace: float | None = None) -> None:
        """Take no new job; let the running ones finish within `grace` seconds (default
        `worker_grace`), then end the rest `error`."""
        grace = self.settings.worker_grace if grace is None else grace
        if self._claiming is not None:
            self._claiming.cancel()
            await asyncio.gather(self._claiming, return_exceptions=True)
            self._claiming = None
        if self._jobs:
            await asyncio.wait(self._jobs, timeout=grace)
        for job_id in list(self._running):
            self._stop(job_id, Outcome(JobStatus.ERROR, reason=f"worker {self.name} shut down"))
        if self._jobs:
            await asyncio.wait(self._jobs)
        for stop in self._stop_listening:
            stop()
        await cancel_all(self._chores)
        self._chores, self._stop_listening = [], []
        with contextlib.suppress(Exception):
            await self.store.worker_stopped(self.name)
        await self.pipeline.aclose()

    async def _recover(self) -> None:
        """End what a previous run of this worker left: its containers, its running jobs (a
        re-run could repeat side effects the user did not ask for twice), and the uploads of
        ended jobs."""
        try:
            removed = await self.executor.remove_orphans()
            if removed:
                logger.warning("removed %d container(s) left by a previous run", removed)
        except ExecutorError as e:
            logger.warning("could not look for orphaned containers: %s", e)
        for job in await self.store.jobs_with_status(JobStatus.RUNNING):
            if job.worker in (self.name, None):  # None: claimed before workers had names
                ended = transition(job, JobStatus.ERROR, reason=self.interrupted_reason)
                if await self.store.update_job(ended, expected=JobStatus.RUNNING):
                    await self.hub.end(ended)
        # The uploads of jobs that ended while no process could delete them (a crash).
        waiting = await self.store.jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING)
        await self.blobs.delete_except({job.upload_key for job in waiting}, among=is_upload_key)

    # -- claiming --------------------------------------------------------------------------

    def _on_queued(self, _signal: Signal) -> None:
        self._queued.set()

    async def _claim_forever(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                job = await self._claim()
            except BaseException:
                self._slots.release()
                raise
            if job is None:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._jobs.add(task)
            task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            logger.error("unexpected failure in the worker", exc_info=task.exception())

    async def _claim(self) -> Job | None:
        """The oldest queued job, claimed; None after waiting for a signal in vain."""
        self._queued.clear()  # before the claim: a job queued after it sets it again
        try:
            job = await self.store.claim_next_job(self.name)
        except Exception:
            logger.exception("claiming a job failed")
            job = None
        if job is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(QUEUE_POLL_SECONDS):
                    await self._queued.wait()
        return job

    # -- a job -----------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        with about_job(job.id):  # its log lines, here and in the pipeline, carry its id
            await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        running = self._running[job.id] = _RunningJob()
        self.metrics.job_started(job)
        logger.info("job %s: running on worker %s", job.id, self.name)
        try:
            channel = self.hub.open(job.id, await self.store.last_event_seq(job.id))
            if not await accounts.is_active(self.store, job.owner_id):
                cancelled = Outcome(JobStatus.CANCELLED, reason=OWNER_DEACTIVATED_REASON)
                await self._finish(job, channel, cancelled, say_reason=False)
                return
            channel.publish(EventType.STATUS, status=job.status.value)
            task = running.task = asyncio.create_task(self.pipeline.run(job, channel))
            if running.stop_with is not None:
                task.cancel()
            try:
                # Shielded: stopping the job (its task) must not stop this one, which ends it.
                outcome = await asyncio.shield(task)
            except asyncio.CancelledError:
                if running.stop_with is None:  # this task itself: the event loop is ending
                    task.cancel()
                    await asyncio.wait({task})
                    gone = Outcome(JobStatus.ERROR, reason=f"worker {self.name} shut down")
                    await self._finish(job, channel, gone)
                    raise
                outcome = running.stop_with
            except Exception as e:
                # A bug or an unexpected executor error: the job must still end.
                logger.exception("job %s: unexpected failure", job.id)
                outcome = Outcome(JobStatus.ERROR, reason=f"internal error: {e!r}")
            await self._finish(job, channel, outcome)
        finally:
            self._running.pop(job.id, None)
            await release_upload(self.store, self.blobs, job)

    def _stop(self, job_id: str, outcome: Outcome) -> None:
        running = self._running.get(job_id)
        if running is None or running.stop_with is not None:
            return
        running.stop_with = outcome
        if running.task is not None:
            running.task.cancel()

    async def _finish(
        self, job: Job, channel: JobChannel, outcome: Outcome, *, say_reason: bool = True
    ) -> None:
        final = transition(
            job, outcome.status, exit_code=outcome.exit_code, reason=outcome.reason
        ).replace(summary=outcome.summary, content_hash=outcome.content_hash)
        if await self.store.update_job(final, expected=JobStatus.RUNNING):
            logger.info("job %s: %s", job.id, final.status.value)
            await self.hub.end(final, say_reason=say_reason)
        else:
            # Another process ended it meanwhile (this worker was thought lost) and wrote
            # its end: that one stands.
            logger.warning("job %s was ended by another process", job.id)
            await channel.abandon()

    # -- cancels and heartbeats ------------------------------------------------------------

    def _on_cancel(self, signal: Signal) -> None:
        self._stop(signal.job_id, Outcome(JobStatus.CANCELLED, reason=CANCELLED_REASON))

    async def _look_for_cancels(self) -> None:
        if self._running:
            for job_id in await self.store.cancel_requests(self.name):
                self._stop(job_id, Outcome(JobStatus.CANCELLED, reason=CANCELLED_REASON))

    async def _beat(self) -> None:
        await self.store.beat(self.name)
