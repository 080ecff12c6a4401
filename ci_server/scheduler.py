"""One job's run, once a worker has claimed it: unpack, ci.toml, plan, environment,
executor, report. What runs it, and when, is the worker's (ci_server/worker/loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ci_server.contents import Contents, ManifestFile, is_manifest, read_manifest
from ci_server.durations import recorded_durations
from ci_server.events import JobChannel
from ci_server.groups import version_key
from ci_server.history import last_failed
from ci_server.metrics import Metrics
from ci_server.models import (
    COLLECTION_NOT_SAID,
    BlobNotFound,
    CIError,
    EventType,
    InvalidUpload,
    Job,
    JobStatus,
    StorageFailure,
    TestOutcome,
    TestSummary,
    utcnow,
)
from ci_server.runner.artifacts import collect as collect_artifacts
from ci_server.runner.collected import CollectedUnknown, read_collected
from ci_server.runner.config import ConfigError, ProjectConfig, load_config
from ci_server.runner.content import content_hash, files_digest, project_digest
from ci_server.runner.environments import EnvironmentCache
from ci_server.runner.executor import REPORT_DIR, Executor, ExecutorError, ImageMissing, RunSpec
from ci_server.runner.layers import JobImage, Layers
from ci_server.runner.output import LineSplitter, LogBudget, pack_lines
from ci_server.runner.project import InstallPlan, ProjectError, plan_install
from ci_server.runner.reports import (
    OutputTail,
    ReportReader,
    ReportRefused,
    with_pytest_counts,
    with_reruns,
)
from ci_server.runner.scratch import numeric_ids
from ci_server.runner.scripts import (
    INSTALL_FAILED_EXIT,
    JUNIT_FILE,
    PYTEST_MISSING_EXIT,
    SHARD_COLLECTED,
    SHARD_FILE,
    SHARD_MODULE,
    TMP_FULL_EXIT,
    cache_disabled,
    job_script,
    only_last_failed,
)
from ci_server.runner.workspace import Removals, give_to, unpack_archive
from ci_server.settings import Settings
from ci_server.stopwatch import Stopwatch
from ci_server.store.blobs import BlobStore, artifact_key
from ci_server.store.repository import JobStore
from ci_server.workspace_cache import WorkspaceCache

logger = logging.getLogger(__name__)

SHARD_PLUGIN = Path(__file__).with_name("runner") / "shard_plugin.py"
UPLOAD = "upload"
"""The job's upload in its folder: a zip, or the server's manifest of its files."""
"""Sent to sharded jobs, never imported here (it needs pytest)."""
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
    content_hash: str | None = None
    """What the tests ran on (runner/content.py), once they ran."""


class JobPipeline:
    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        blobs: BlobStore,
        settings: Settings,
        *,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.executor = executor
        self.blobs = blobs
        self.settings = settings
        self.workspaces_dir = settings.resolved_data_dir / "workspaces"
        self.contents = Contents(blobs, settings.archive_limits, self.workspaces_dir)
        self._tests_user = numeric_ids(settings.container_user)
        """Whose a job's workspace is: the tests write into it through an overlay
        (runner/scratch.py)."""
        self.removals = Removals()
        """Job folders, and workspaces evicted from the cache, removed after the job's end."""
        self.workspaces = WorkspaceCache(
            settings.resolved_data_dir / "workspace-cache",
            settings.workspace_cache_size,
            self.removals,
        )
        self.environments = EnvironmentCache(
            executor,
            owner=settings.instance_id,
            keep=settings.env_cache_size,
            metrics=metrics,
            on_use=lambda tag: store.record_environment_use(tag, utcnow()),
        )
        self.layers = Layers(executor, self.environments, reuse=settings.env_cache)
        self._without_pytest: set[str] = set()
        """Images a job with nothing to install found without pytest: such jobs run in an
        environment there, which installs it."""
        self.reports = ReportReader(settings.report_limits)

    async def aclose(self) -> None:
        """Stop the report reader; wait for the removals under way."""
        self.reports.close()
        await self.removals.aclose()

    async def run(self, job: Job, channel: JobChannel) -> Outcome:
        """Run the claimed `job`, publishing its log on `channel`, within its timeout; how
        it ended. Cancelling the call stops the job."""
        await asyncio.to_thread(self.workspaces_dir.mkdir, parents=True, exist_ok=True)
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
            self.removals.remove(workspace)

    async def _test(self, job: Job, workspace: Path, log: _JobLog) -> Outcome:
        """Unpack, pick the environment, run pytest and read its report."""
        project = workspace / "src"
        steps = Stopwatch(logger, f"job {job.id}")
        files = await self._unpack(job, workspace, project)
        steps.lap("workspace written")
        if files is None or job.owner_id is None:  # a zip (a manifest has an owner)
            digest = await asyncio.to_thread(project_digest, project)
            steps.lap("content hashed")
            return await self._test_unpacked(job, workspace, digest, log, steps)
        try:
            entries = [(f.path, f.executable, f.size, f.hash) for f in files]
            digest = await asyncio.to_thread(files_digest, entries)  # 20,000 files: 6 ms
            paths = [f.path for f in files]
            return await self._test_unpacked(job, workspace, digest, log, steps, paths)
        finally:
            manifest = workspace / UPLOAD
            kept = await self.workspaces.keep(job.owner_id, job.project, files, project, manifest)
            steps.lap("workspace kept" if kept else "workspace not kept")

    async def _unpack(self, job: Job, workspace: Path, project: Path) -> list[ManifestFile] | None:
        """The job's upload as the folder `project`: a zip unpacked (None), or the files of
        the server's manifest (contents.py), written over the tree kept from the owner's last
        job of the project (workspace_cache.py) when there is one. The manifest stays at
        UPLOAD, to be kept with the tree."""
        upload = workspace / UPLOAD
        try:
            await self.blobs.fetch(job.upload_key, upload)
        except BlobNotFound:
            raise StorageFailure("the job's upload is missing from the blob store") from None
        if not await asyncio.to_thread(is_manifest, upload):
            try:
                limits = self.settings.archive_limits
                await asyncio.to_thread(unpack_archive, upload, project, limits)
            finally:
                await asyncio.to_thread(upload.unlink, missing_ok=True)  # as big as the project
            if self._tests_user is not None:
                await asyncio.to_thread(give_to, project, *self._tests_user)
            return None
        if job.owner_id is None:  # a manifest's contents are its owner's, always set
            raise StorageFailure("the job's upload names contents but the job no owner")
        files = await asyncio.to_thread(read_manifest, upload)
        present = await self.workspaces.take(job.owner_id, job.project, project)
        written = await self.contents.assemble(
            job.owner_id, files, project, present, self._tests_user
        )
        logger.debug(
            "job %s: %d of %d files written (%d were there)",
            job.id,
            written,
            len(files),
            len(present),
        )
        return files

    async def _test_unpacked(
        self,
        job: Job,
        workspace: Path,
        digest: str,
        log: _JobLog,
        steps: Stopwatch,
        paths: list[str] | None = None,
    ) -> Outcome:
        """The job's run on its unpacked project, whose files' digest is `digest` (and whose
        files are `paths`, if known from its manifest)."""
        project, output = workspace / "src", workspace / "output"
        output.mkdir()
        config = await asyncio.to_thread(load_config, project)
        image = self._image(job, config)
        # It reads the tests too, and the job's own pytest args for the plugins they need.
        plan = await asyncio.to_thread(plan_install, project, config, job.pytest_args, paths)
        steps.lap("planned")
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
        last_failed = await self._last_failed(job, pytest_args, log)
        if job.shard_index is not None and job.shard_count is not None:
            spec = replace(spec, inputs=await self._shard_inputs(job, workspace, log))
        tail = OutputTail()
        outcome = await self._run_tests(
            job, spec, plan, config, pytest_args, last_failed, tail, log, steps
        )
        if isinstance(outcome, Outcome):
            return outcome
        exit_code, environment = outcome
        log.finish()
        if exit_code == INSTALL_FAILED_EXIT and plan.project_commands:
            return Outcome(JobStatus.FAILED, exit_code, "installing the project failed")
        summary = await self._store_results(job, output, exit_code, tail, log)
        if spec.inputs is not None:
            summary = await self._with_collected(job, output, summary, log)
        await self._keep_artifacts(job, output, workspace / "artifacts", log)
        steps.lap("report read")
        tested = content_hash(digest, environment)
        limit_reached = self._limit_reached(exit_code, output / JUNIT_FILE)
        if limit_reached:
            return Outcome(JobStatus.FAILED, exit_code, limit_reached, summary, tested)
        status = JobStatus.SUCCEEDED if exit_code == 0 else JobStatus.FAILED
        return Outcome(status, exit_code, summary=summary, content_hash=tested)

    def _image(self, job: Job, config: ProjectConfig) -> str:
        """The image the job runs in: its Python version's (CI_PYTHON_IMAGES), else
        ci.toml's, else the runner image; ProjectError for one this server does not run."""
        if job.python is None:
            image = config.image or self.settings.runner_image
            if image not in self.settings.allowed_image_set:
                allowed = ", ".join(sorted(self.settings.allowed_image_set))
                raise ProjectError(
                    f"ci.toml: image {image!r} is not allowed here (allowed: {allowed})"
                )
            return image
        images = self.settings.python_images
        image = images.get(job.python)
        if image is None:
            known = ", ".join(sorted(images, key=version_key)) or "none"
            raise ProjectError(
                f"Python {job.python} is not one this server runs (CI_PYTHON_IMAGES: {known})"
            )
        if config.image is not None and config.image != image:
            raise ProjectError(
                f"ci.toml chooses image {config.image!r}, but Python {job.python} runs in "
                f"{image!r} here: ask for one or the other"
            )
        return image

    async def _last_failed(
        self, job: Job, pytest_args: list[str], log: _JobLog
    ) -> Sequence[str] | None:
        """The failures of the project's last finished job, for pytest to run first (or
        only, with --lf); None to keep pytest's order (-p no:cacheprovider, or none failed)."""
        if cache_disabled(pytest_args):
            return None
        last = await last_failed(self.store, job)
        failed = last.node_ids if last is not None else ()
        if only_last_failed(pytest_args):
            which = f"the {_that_failed(len(failed))}" if failed else "every test: none failed"
            log.system(f"Last failed only: {which} in the project's last finished job")
            return failed
        if last is None or not failed:
            return None
        log.system(
            f"Failed first: {_that_failed(len(failed))} in job {last.job_id} "
            "(the project's last finished) run first"
        )
        return failed

    async def _shard_inputs(self, job: Job, workspace: Path, log: _JobLog) -> Path:
        """The folder that gives a sharded job the shard plugin and what it splits by: its
        shard and the project's recorded durations (durations.py)."""
        durations = await recorded_durations(self.store, job)
        shard = {
            "index": job.shard_index,
            "count": job.shard_count,
            "durations": durations,
            "collected": SHARD_COLLECTED,
        }
        inputs = workspace / "input"
        await asyncio.to_thread(_write_shard_inputs, inputs, shard)
        how = (
            f"by the recorded durations of {len(durations):,} tests"
            if durations
            else "by file: no durations recorded for this project yet"
        )
        log.system(f"Shard {job.shard_index} of {job.shard_count}: the tests are split {how}")
        return inputs

    async def _with_collected(
        self, job: Job, output: Path, summary: TestSummary | None, log: _JobLog
    ) -> TestSummary | None:
        """`summary` with what the shard says it collected (or that it did not say), which
        its group compares with its other shards' (groups.py: collection_problems)."""
        shard = f"Shard {job.shard_index} of {job.shard_count}"
        try:
            collected = await asyncio.to_thread(read_collected, output)
        except CollectedUnknown as e:
            log.system(f"{shard}: what it collected is unknown ({SHARD_COLLECTED}: {e})")
            if summary is None:
                return None
            return replace(summary, collected_sha256=COLLECTION_NOT_SAID)
        log.system(
            f"{shard} collected {collected.tests:,} tests (SHA-256 of their ids "
            f"{collected.sha256[:16]}...): every shard of its group must say the same"
        )
        if summary is None:
            return None
        return replace(summary, collected=collected.tests, collected_sha256=collected.sha256)

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
        last_failed: Sequence[str] | None,
        tail: OutputTail,
        log: _JobLog,
        steps: Stopwatch,
    ) -> tuple[int, str] | Outcome:
        """Run the tests in the image the layers make for the job, with nothing to install
        from the network: the pytest's status and the key of the environment it ran in
        (JobImage.environment), or the Outcome of a failed build.

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
                exit_code = await self._run_in(
                    prepared, spec, plan, config, pytest_args, last_failed, tail, log
                )
                steps.lap("container run")
            except ImageMissing as e:
                if not self.environments.forget(e.image):
                    raise
                log.system(f"Image {e.image} is gone from the engine: building it again")
                continue
            finally:
                await self.layers.discard(prepared)
            if exit_code != PYTEST_MISSING_EXIT or prepared.installed:
                return exit_code, prepared.environment
            self._without_pytest.add(spec.image)
            pytest_missing = True
        raise ExecutorError(f"the images for job {job.id} kept going missing from the engine")

    async def _run_in(
        self,
        prepared: JobImage,
        spec: RunSpec,
        plan: InstallPlan,
        config: ProjectConfig,
        pytest_args: list[str],
        last_failed: Sequence[str] | None,
        tail: OutputTail,
        log: _JobLog,
    ) -> int:
        script = job_script(
            plan,
            pytest_args,
            environment=prepared.installed,
            last_failed=last_failed,
            shard=spec.inputs is not None,
            artifacts=config.artifacts,
            artifact_limits=self.settings.artifact_limits,
        )
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
        summary = with_pytest_counts(report.summary, tail.pytest_counts())
        results, summary = with_reruns(report.results, summary)
        summary = summary.checked(exit_code)
        for result in results:
            if result.outcome is TestOutcome.FLAKY:
                log.system(f"Flaky: {result.node_id} {result.message} (it does not fail the job)")
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
        await self.store.set_test_results(job.id, results)
        return summary

    async def _keep_artifacts(self, job: Job, output: Path, folder: Path, log: _JobLog) -> None:
        """Keep the report and the files the job packed as its artifacts, as many as fit
        the limits (the log says what was left out), in the blob store and listed in the
        store; a store that fails loses the artifacts, not the job."""
        await asyncio.to_thread(folder.mkdir)
        limits = self.settings.artifact_limits
        collected = await asyncio.to_thread(collect_artifacts, output, folder, limits)
        for note in collected.notes:
            log.system(f"Artifacts: {note}")
        kept = collected.artifacts
        try:
            for artifact, file in zip(kept, collected.files, strict=True):
                await self.blobs.put(artifact_key(job.id, artifact.position), file)
            await self.store.set_artifacts(job.id, kept)
        except StorageFailure as e:
            log.system(f"Artifacts not kept: {e}")
            for artifact in kept:
                with contextlib.suppress(StorageFailure):
                    await self.blobs.delete(artifact_key(job.id, artifact.position))
            return
        if kept:
            size = sum(artifact.size for artifact in kept)
            log.system(
                f"Artifacts: {len(kept)} file(s) kept ({size:,} bytes): ci artifacts {job.id}"
            )


class _JobLog:
    """Publishes a job's output as bounded log lines, those that come together in one event."""

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
        exhausted = self.budget.exhausted
        for text in pack_lines(self.budget.admit(lines)):
            self.channel.publish(EventType.LOG, stream="stdout", text=text)
        if self.budget.exhausted and not exhausted:
            self.system(
                f"log truncated: the job printed more than {self.budget.max_bytes} bytes; "
                "the rest of its output is discarded (the job keeps running)"
            )


def _write_shard_inputs(inputs: Path, shard: dict[str, object]) -> None:
    inputs.mkdir()
    (inputs / f"{SHARD_MODULE}.py").write_bytes(SHARD_PLUGIN.read_bytes())
    (inputs / SHARD_FILE).write_text(json.dumps(shard), encoding="utf-8")


def _that_failed(count: int) -> str:
    return f"{count} test that failed" if count == 1 else f"{count} tests that failed"
