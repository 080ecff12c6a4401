"""The queue, the worker pool and the life of a job from `queued` to its final status.

Submissions wait in a FIFO queue; `max_concurrent_jobs` workers take them one at a time.
Each job runs in its own task, so that cancelling it (or its timeout) kills just that job.
A deactivated user's jobs do not run: `ci-admin` deactivates users from another process, so
the owners of waiting jobs are looked up every `RECHECK_SECONDS` and again when a worker
takes a job, and their queued jobs are cancelled here, where their watchers get the `end`.
At start-up, jobs that a crash left `queued` run again; jobs left `running` are marked
`error` ("interrupted by server restart") and their containers are removed: a re-run could
repeat side effects the user did not ask for twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ci_server import accounts
from ci_server.events import EventHub, JobChannel
from ci_server.models import (
    CIError,
    EventType,
    InvalidUpload,
    Job,
    JobStatus,
    TestSummary,
    new_job_id,
)
from ci_server.runner.config import ConfigError, ProjectConfig, load_config
from ci_server.runner.environments import EnvironmentCache
from ci_server.runner.executor import REPORT_DIR, Executor, ExecutorError, ImageMissing, RunSpec
from ci_server.runner.layers import JobImage, Layers
from ci_server.runner.output import LineSplitter, LogBudget
from ci_server.runner.project import InstallPlan, ProjectError, plan_install
from ci_server.runner.reports import OutputTail, ReportReader, ReportRefused, with_pytest_counts
from ci_server.runner.scripts import (
    INSTALL_FAILED_EXIT,
    JUNIT_FILE,
    PYTEST_MISSING_EXIT,
    TMP_FULL_EXIT,
    job_script,
)
from ci_server.runner.workspace import remove_tree, unpack_archive
from ci_server.settings import Settings
from ci_server.states import transition
from ci_server.store.repository import JobStore

logger = logging.getLogger(__name__)

INTERRUPTED_REASON = "interrupted by server restart"
CANCELLED_REASON = "cancelled by user"
OWNER_DEACTIVATED_REASON = "cancelled: owner deactivated"
CONTAINER_ENV = {"HOME": "/tmp/home", "PYTHONUNBUFFERED": "1", "PIP_USER": "1"}
"""PIP_USER: an unprivileged user installs into its home (the image's Python is root's)."""


def _size(count: int) -> str:
    """`2 GiB`, `64 MiB`: a limit as a person reads it."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size and count % size == 0:
            return f"{count // size} {unit}"
    return f"{count} bytes"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: JobStatus
    exit_code: int | None = None
    reason: str | None = None
    summary: TestSummary | None = None


class Scheduler:
    def __init__(
        self, store: JobStore, hub: EventHub, executor: Executor, settings: Settings
    ) -> None:
        self.store = store
        self.hub = hub
        self.executor = executor
        self.settings = settings
        self.uploads_dir = settings.resolved_data_dir / "uploads"
        self.workspaces_dir = settings.resolved_data_dir / "workspaces"
        self.environments = EnvironmentCache(
            executor, owner=settings.instance_id, keep=settings.env_cache_size
        )
        self.layers = Layers(executor, self.environments, reuse=settings.env_cache)
        self._without_pytest: set[str] = set()
        """Images a job with nothing to install found without pytest: such jobs run in an
        environment there, which installs it."""
        self.reports = ReportReader(settings.report_limits)
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: dict[str, str | None] = {}  # waiting jobs' owners, in FIFO order
        self._running: dict[str, _RunningJob] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._owner_watch: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        for directory in (self.uploads_dir, self.workspaces_dir):
            directory.mkdir(parents=True, exist_ok=True)
        await self._recover()
        self._workers = [
            asyncio.create_task(self._work(), name=f"worker-{n}")
            for n in range(self.settings.max_concurrent_jobs)
        ]
        self._owner_watch = asyncio.create_task(self._watch_owners(), name="owner-watch")

    async def stop(self) -> None:
        tasks = [*self._workers, *([self._owner_watch] if self._owner_watch else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers, self._owner_watch = [], None
        self.reports.close()

    async def _recover(self) -> None:
        try:
            removed = await self.executor.remove_orphans()
            if removed:
                logger.warning("removed %d container(s) left by a previous run", removed)
        except ExecutorError as e:
            logger.warning("could not look for orphaned containers: %s", e)
        for job in await self.store.jobs_with_status(JobStatus.RUNNING):
            channel = self.hub.open(job.id, await self.store.last_event_seq(job.id))
            await self._finish(job, channel, Outcome(JobStatus.ERROR, reason=INTERRUPTED_REASON))
        for job in await self.store.jobs_with_status(JobStatus.QUEUED):
            self.hub.open(job.id, await self.store.last_event_seq(job.id))
            self._enqueue(job)

    # -- commands --------------------------------------------------------------------------

    async def submit(
        self,
        upload: Path,
        *,
        timeout_seconds: float | None = None,
        pytest_args: Sequence[str] = (),
        no_cache: bool = False,
        owner_id: str | None = None,
    ) -> Job:
        """Take over the checked archive at `upload` and queue a job for `owner_id`."""
        limit = self.settings.max_job_timeout
        job = Job(
            id=new_job_id(),
            timeout_seconds=min(timeout_seconds or self.settings.job_timeout, limit),
            pytest_args=tuple(pytest_args),
            no_cache=no_cache,
            owner_id=owner_id,
        )
        await asyncio.to_thread(shutil.move, upload, self._upload_path(job.id))
        channel = self.hub.open(job.id)
        await self.store.add_job(job)
        channel.publish(EventType.STATUS, status=job.status.value)
        self._enqueue(job)
        return job

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job; a finished one is returned unchanged."""
        job = await self.store.get_job(job_id)
        if job.status is JobStatus.QUEUED:
            cancelled = await self._cancel_queued(job, CANCELLED_REASON)
            if cancelled is not None:
                return cancelled
            job = await self.store.get_job(job_id)  # a worker took it meanwhile
        running = self._running.get(job_id)
        if job.status is JobStatus.RUNNING and running is not None:
            running.cancel_requested = True
            if running.task is not None:
                running.task.cancel()
            await running.finished.wait()
            job = await self.store.get_job(job_id)
        return job

    async def _cancel_queued(self, job: Job, reason: str) -> Job | None:
        """Cancel a job that waits (it never starts): the job as cancelled, or None if it
        no longer waited (a worker took it, or another cancel came first)."""
        cancelled = transition(job, JobStatus.CANCELLED, reason=reason)
        if not await self.store.update_job(cancelled, expected=JobStatus.QUEUED):
            return None
        self._queued.pop(job.id, None)
        await self._announce_end(cancelled, self.hub.open(job.id))
        await asyncio.to_thread(self._upload_path(job.id).unlink, missing_ok=True)
        return cancelled

    def queue_positions(self) -> dict[str, int]:
        """1 for the next job to run."""
        return {job_id: n for n, job_id in enumerate(self._queued, start=1)}

    # -- workers ---------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        self._queued[job.id] = job.owner_id
        self._queue.put_nowait(job.id)

    def _upload_path(self, job_id: str) -> Path:
        return self.uploads_dir / f"{job_id}.zip"

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            if job_id not in self._queued:
                continue  # cancelled while it waited
            del self._queued[job_id]
            try:
                await self._run(job_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("job %s: unexpected failure in the worker", job_id)

    async def _run(self, job_id: str) -> None:
        queued = await self.store.get_job(job_id)
        if queued.status is not JobStatus.QUEUED:
            return
        if not await accounts.is_active(self.store, queued.owner_id):
            await self._cancel_queued(queued, OWNER_DEACTIVATED_REASON)
            return
        job = transition(queued, JobStatus.RUNNING)
        # Registered before the status is stored, so that a cancel arriving while the store
        # writes `running` finds the job and is honoured as soon as its task exists.
        running = self._running[job_id] = _RunningJob()
        try:
            if not await self.store.update_job(job, expected=JobStatus.QUEUED):
                return
            channel = self.hub.open(job_id)
            channel.publish(EventType.STATUS, status=job.status.value)
            task = running.task = asyncio.create_task(
                self._execute(job, channel), name=f"job-{job_id}"
            )
            if running.cancel_requested:
                task.cancel()
            try:
                # Shielded: cancelling the job's task (a user's cancel) must not cancel the worker.
                outcome = await asyncio.shield(task)
            except asyncio.CancelledError:
                if not running.cancel_requested:  # the worker itself: the server is stopping
                    task.cancel()
                    await asyncio.wait({task})
                    shutdown = Outcome(JobStatus.ERROR, reason="server shut down")
                    await self._finish(job, channel, shutdown)
                    raise
                outcome = Outcome(JobStatus.CANCELLED, reason=CANCELLED_REASON)
            except Exception as e:
                # A bug or an unexpected executor error: the job must still end.
                logger.exception("job %s: unexpected failure", job_id)
                outcome = Outcome(JobStatus.ERROR, reason=f"internal error: {e!r}")
            await self._finish(job, channel, outcome)
        finally:
            self._running.pop(job_id, None)
            running.finished.set()
            await asyncio.to_thread(self._upload_path(job_id).unlink, missing_ok=True)

    async def _watch_owners(self) -> None:
        """Cancel the waiting jobs of users deactivated meanwhile, every RECHECK_SECONDS
        (one read per owner)."""
        while True:
            await asyncio.sleep(accounts.RECHECK_SECONDS)
            try:
                for owner in set(self._queued.values()):
                    if not await accounts.is_active(self.store, owner):
                        await self._cancel_jobs_of(owner, OWNER_DEACTIVATED_REASON)
            except Exception:
                logger.exception("checking the owners of queued jobs failed")

    async def _cancel_jobs_of(self, owner: str | None, reason: str) -> None:
        for job_id in [job_id for job_id, of in self._queued.items() if of == owner]:
            job = await self.store.get_job(job_id)
            if job.status is JobStatus.QUEUED:
                await self._cancel_queued(job, reason)

    async def _execute(self, job: Job, channel: JobChannel) -> Outcome:
        workspace = Path(tempfile.mkdtemp(prefix=f"{job.id}-", dir=self.workspaces_dir))
        log = _JobLog(channel, self.settings.max_line_chars, self.settings.max_log_bytes)
        try:
            async with asyncio.timeout(job.timeout_seconds):
                return await self._test(job, workspace, log)
        except TimeoutError:
            return Outcome(JobStatus.TIMED_OUT, reason=f"timed out after {job.timeout_seconds:g}s")
        except (InvalidUpload, ProjectError, ConfigError) as e:
            return Outcome(JobStatus.FAILED, reason=str(e))
        except CIError as e:  # ExecutorError among them: the system failed, not the tests
            return Outcome(JobStatus.ERROR, reason=str(e))
        except OSError as e:
            logger.exception("job %s: system error", job.id)
            return Outcome(JobStatus.ERROR, reason=f"system error: {e}")
        finally:
            log.finish()
            await asyncio.to_thread(remove_tree, workspace)

    async def _test(self, job: Job, workspace: Path, log: _JobLog) -> Outcome:
        """Unpack, pick the environment, run pytest and read its report."""
        project, output = workspace / "src", workspace / "output"
        limits = self.settings.archive_limits
        await asyncio.to_thread(unpack_archive, self._upload_path(job.id), project, limits)
        output.mkdir()
        config = load_config(project)
        image = config.image or self.settings.runner_image
        if image not in self.settings.allowed_image_set:
            allowed = ", ".join(sorted(self.settings.allowed_image_set))
            raise ProjectError(f"ci.toml: image {image!r} is not allowed here (allowed: {allowed})")
        plan = await asyncio.to_thread(plan_install, project, config)  # reads the tests too
        pytest_args = [*config.pytest_args, *job.pytest_args]
        spec = RunSpec(
            job_id=job.id,
            image=image,
            script="",  # once the job's image is known
            workspace=project,
            output_dir=output,
            env={**config.env, **CONTAINER_ENV},
            limits=self.settings.container_limits,
            user=self.settings.container_user,
            network=self.settings.test_network,
        )
        log.system(f"Project: {plan.description}")
        for note in plan.notes:
            log.system(note)
        tail = OutputTail()
        outcome = await self._run_tests(job, spec, plan, config, pytest_args, tail, log)
        if isinstance(outcome, Outcome):
            return outcome
        exit_code = outcome
        log.finish()
        if exit_code == INSTALL_FAILED_EXIT and plan.project_commands:
            return Outcome(JobStatus.FAILED, exit_code, "installing the project failed")
        summary = await self._store_results(job, output, exit_code, tail, log)
        limit_reached = self._limit_reached(exit_code, output / JUNIT_FILE)
        if limit_reached:
            return Outcome(JobStatus.FAILED, exit_code, limit_reached, summary)
        status = JobStatus.SUCCEEDED if exit_code == 0 else JobStatus.FAILED
        return Outcome(status, exit_code, summary=summary)

    def _limit_reached(self, exit_code: int, report: Path) -> str | None:
        """Why the job fails if it wrote as much as it may somewhere."""
        limits = self.settings.container_limits
        if exit_code == TMP_FULL_EXIT:
            return f"wrote more than {_size(limits.tmp_bytes)} to /tmp"
        if report.exists() and report.lstat().st_size >= limits.file_bytes:
            return f"wrote more than {_size(limits.file_bytes)} to {REPORT_DIR}"
        return None

    # -- where the tests run: never with the network, unless the server allows it ----------

    async def _run_tests(
        self,
        job: Job,
        spec: RunSpec,
        plan: InstallPlan,
        config: ProjectConfig,
        pytest_args: list[str],
        tail: OutputTail,
        log: _JobLog,
    ) -> int | Outcome:
        """Run the tests in the image the layers make for the job, with nothing to install
        from the network: the pytest's status, or the Outcome of a failed build.

        A job with nothing to install runs in its own image; if pytest is not there, again in
        an environment, which installs it. An environment image gone from the engine meanwhile
        (removed by hand) is built again, and so are the layers under it if they went too."""
        pytest_missing = spec.image in self._without_pytest
        for _ in range(4):  # each layer could be missing, then pytest
            prepared = await self.layers.prepare(
                spec, plan, config, log, rebuild=job.no_cache, pytest_missing=pytest_missing
            )
            try:
                if prepared.failure is not None:
                    return Outcome(JobStatus.FAILED, prepared.exit_code, prepared.failure)
                exit_code = await self._run_in(prepared, spec, plan, pytest_args, tail, log)
            except ImageMissing as e:
                if not self.environments.forget(e.image):
                    raise
                log.system(f"Image {e.image} is gone from the engine: building it again")
                continue
            finally:
                await self.layers.discard(prepared)
            if exit_code != PYTEST_MISSING_EXIT or prepared.installed:
                return exit_code
            self._without_pytest.add(spec.image)
            pytest_missing = True
        raise ExecutorError(f"the images for job {job.id} kept going missing from the engine")

    async def _run_in(
        self,
        prepared: JobImage,
        spec: RunSpec,
        plan: InstallPlan,
        pytest_args: list[str],
        tail: OutputTail,
        log: _JobLog,
    ) -> int:
        script = job_script(plan, pytest_args, environment=prepared.installed)
        log.system(f"Running in {prepared.image}")
        job_spec = replace(spec, image=prepared.image, script=script)
        return await self.executor.run(job_spec, tail.following(log.feed))

    async def _store_results(
        self, job: Job, output: Path, exit_code: int, tail: OutputTail, log: _JobLog
    ) -> TestSummary | None:
        """Keep the results of the report pytest left in `output`, and say in the log when
        it is refused, capped, or says what the exit code denies."""
        try:
            report = await self.reports.read(output, JUNIT_FILE)
        except ReportRefused as e:
            log.system(f"Test report not used: {e}")
            return None
        if report is None:
            return None
        summary = with_pytest_counts(report.summary, tail.pytest_counts()).checked(exit_code)
        if summary.results_kept is not None:
            log.system(
                f"Test report capped: it has {summary.total:,} tests; the results of the first "
                f"{summary.results_kept:,} are kept (CI_MAX_TEST_RESULTS), all are counted"
            )
        if summary.warning:
            says = (
                f"{summary.failed:,} failed and {summary.errors:,} errors"
                if summary.failed or summary.errors
                else "no test failed"
            )
            log.system(
                f"Test report disagrees with the exit code: it says {says}, pytest exited with "
                f"{exit_code}; the job's status follows the exit code"
            )
        await self.store.set_test_results(job.id, report.results)
        return summary

    async def _finish(self, job: Job, channel: JobChannel, outcome: Outcome) -> None:
        final = transition(
            job, outcome.status, exit_code=outcome.exit_code, reason=outcome.reason
        ).replace(summary=outcome.summary)
        if not await self.store.update_job(final, expected=job.status):
            final = await self.store.get_job(job.id)
        if final.reason:
            channel.publish(EventType.LOG, stream="system", text=final.reason)
        await self._announce_end(final, channel)

    async def _announce_end(self, job: Job, channel: JobChannel) -> None:
        channel.publish(
            EventType.END,
            status=job.status.value,
            exit_code=job.exit_code,
            success=job.success,
            reason=job.reason,
            duration_seconds=job.duration_seconds,
            summary=None if job.summary is None else dataclasses.asdict(job.summary),
        )
        await channel.close()


class _RunningJob:
    def __init__(self) -> None:
        self.task: asyncio.Task[Outcome] | None = None
        self.cancel_requested = False
        self.finished = asyncio.Event()


class _JobLog:
    """Publishes a job's output as bounded log lines."""

    def __init__(self, channel: JobChannel, max_line_chars: int, max_bytes: int) -> None:
        self.channel = channel
        self.splitter = LineSplitter(max_line_chars)
        self.budget = LogBudget(max_bytes)
        self._finished = False

    def system(self, text: str) -> None:
        self.channel.publish(EventType.LOG, stream="system", text=text)

    def feed(self, chunk: bytes) -> None:
        self._emit(self.splitter.feed(chunk))

    def finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._emit(self.splitter.finish())
        if self.budget.exhausted:
            self.system(f"{self.budget.dropped_lines} more output line(s) not kept")

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            if self.budget.admit(line):
                self.channel.publish(EventType.LOG, stream="stdout", text=line)
            elif self.budget.dropped_lines == 1:
                self.system(
                    f"log truncated: the job printed more than {self.budget.max_bytes} bytes; "
                    "the rest of its output is discarded (the job keeps running)"
                )
