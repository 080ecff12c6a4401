"""JobService: what a user may do with jobs, the only thing the API's routes call.

It submits (the upload kept in the blob store, a `queued` job stored: a worker of any
process claims it from the store and fetches the upload), shows and lists a user's jobs
with their place in the queue (counted by the store, so every API replica says the same),
cancels, and opens a job's event stream. A user
sees only their own jobs: another user's job is JobNotFound, word for word as an unknown id.

A cancel of a queued job is a compare-and-set here; of a running one, a request through the
store that the job's worker acts on (at once through a signal, or at its next poll), and the
service waits for the job's end a few seconds. A deactivated user's queued jobs are
cancelled here, every RECHECK_SECONDS: `ci-admin` deactivates users from another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import AsyncGenerator, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ci_server import accounts
from ci_server.contents import (
    KNOWN_TREE_ENTRIES,
    Contents,
    ManifestFile,
    Received,
    encode_manifest,
)
from ci_server.events import EventHub
from ci_server.groups import (
    GroupAlreadyFinished,
    GroupNotFound,
    JobGroup,
    is_group_id,
    new_group_id,
    variants,
)
from ci_server.models import (
    CANCELLED_REASON,
    OWNER_DEACTIVATED_REASON,
    Artifact,
    ArtifactNotFound,
    EventType,
    InvalidUpload,
    Job,
    JobAlreadyFinished,
    JobEvent,
    JobNotFound,
    JobStatus,
    StorageFailure,
    TestHistory,
    TestOutcome,
    TestResult,
    new_job_id,
    utcnow,
)
from ci_server.periodic import cancel_all, start_every
from ci_server.runner.config import ProjectConfig, config_or_empty, upload_config
from ci_server.runner.naming import NAMING_FILES, given_name, project_name, upload_project_name
from ci_server.runner.shapes import MAX_FILE_BYTES
from ci_server.runner.workspace import check_archive
from ci_server.settings import Settings
from ci_server.states import transition
from ci_server.stopwatch import Stopwatch
from ci_server.store.blobs import BlobStore, artifact_key
from ci_server.store.repository import MAX_HISTORY_RUNS, Store
from ci_server.uploads import release_upload
from ci_server.users import User, can_see, owner_filter

logger = logging.getLogger(__name__)

CANCEL_WAIT_SECONDS = 10.0
"""How long a cancel of a running job waits for its end before it answers (the job as it
is then: a worker that stopped responding ends it `error` later, its sweep's doing)."""
COPY_CHUNK = 1024 * 1024
STORE_CHECK_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as a user sees it: with its place in the queue while it waits (1: next)."""

    job: Job
    queue_position: int | None = None


@dataclass(frozen=True, slots=True)
class GroupView:
    """A group as a user sees it: its jobs' views, in the group's order."""

    group: JobGroup
    jobs: tuple[JobView, ...]


class JobService:
    def __init__(self, store: Store, hub: EventHub, blobs: BlobStore, settings: Settings) -> None:
        self.store = store
        self.hub = hub
        self.blobs = blobs
        """Where uploads wait for their job's worker, under the job's id."""
        self.settings = settings
        self.incoming_dir = settings.resolved_data_dir / "incoming"
        self.contents = Contents(
            blobs,
            settings.archive_limits,
            self.incoming_dir,
            known_trees=KNOWN_TREE_ENTRIES,
            kept_for=settings.content_keep_hours * 3600,
        )
        self._owner_watch: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JobService:
        await asyncio.to_thread(self.incoming_dir.mkdir, parents=True, exist_ok=True)
        self._owner_watch = start_every(
            accounts.RECHECK_SECONDS, self.cancel_jobs_of_inactive_owners, "owner re-check"
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owner_watch is not None:
            await cancel_all([self._owner_watch])
            self._owner_watch = None

    # -- asking ----------------------------------------------------------------------------

    async def get(self, user: User, job_id: str) -> JobView:
        job = await self._visible(user, job_id)
        return (await self._views([job]))[0]

    async def list(
        self,
        user: User,
        *,
        limit: int = 100,
        before: str | None = None,
        project: str | None = None,
    ) -> list[JobView]:
        """Newest first; a user's own jobs, every job for an admin; with `project`, only
        those of projects of that name."""
        jobs = await self.store.list_jobs(
            limit=limit, before=before, owner_id=owner_filter(user), project=project
        )
        return await self._views(jobs)

    async def get_group(self, user: User, group_id: str) -> GroupView:
        return (await self._group_views(user, [group_id]))[0]

    async def list_runs(
        self,
        user: User,
        *,
        limit: int = 100,
        before: str | None = None,
        project: str | None = None,
    ) -> list[JobView | GroupView]:
        """As `list`, a group as one entry (its jobs share their `created_at`, so they come
        together); `before` may be a group's id."""
        if before is not None and is_group_id(before):
            group = (await self._group_views(user, [before]))[0].group
            before = min(group.jobs, key=lambda job: (job.created_at, job.id)).id
        entries: dict[str, Job] = {}  # by a lone job's id, or a group's: its first job
        while len(entries) < limit:
            page = await self.store.list_jobs(
                limit=limit, before=before, owner_id=owner_filter(user), project=project
            )
            for job in page:
                entries.setdefault(job.group_id or job.id, job)
            if len(page) < limit:
                break
            before = page[-1].id
        kept = list(entries.items())[:limit]
        groups = await self._group_views(user, [entry for entry, _ in kept])
        lone = await self._views([job for entry, job in kept if job.group_id is None])
        views = {view.group.id: view for view in groups} | {view.job.id: view for view in lone}
        return [views[entry] for entry, _ in kept]

    async def test_results(
        self,
        user: User,
        job_id: str,
        *,
        after: int | None = None,
        limit: int | None = None,
        outcomes: Collection[TestOutcome] = (),
    ) -> list[TestResult]:
        await self._visible(user, job_id)
        return await self.store.test_results(job_id, after=after, limit=limit, outcomes=outcomes)

    async def artifacts(self, user: User, job_id: str) -> list[Artifact]:
        """The files the job left (its report, what ci.toml's `artifacts` matched)."""
        await self._visible(user, job_id)
        return await self.store.artifacts(job_id)

    async def artifact(
        self, user: User, job_id: str, path: str
    ) -> tuple[Artifact, AsyncGenerator[bytes, None]]:
        """The job's artifact at `path` and its bytes, in chunks (an async generator, to
        close when left early); ArtifactNotFound if it has none there (any longer)."""
        for artifact in await self.artifacts(user, job_id):
            if artifact.path == path:
                key = artifact_key(job_id, artifact.position)
                if not await self.blobs.exists(key):  # removed by retention meanwhile
                    break
                return artifact, self.blobs.read(key)
        raise ArtifactNotFound(job_id, path)

    async def test_history(
        self, user: User, project: str, *, runs: int = MAX_HISTORY_RUNS
    ) -> list[TestHistory]:
        """Each test of the user's own `project` with its latest `runs` outcomes: projects
        are their owner's (two users' `app` are two projects), an admin's too."""
        return await self.store.test_history(user.id, project, runs=runs)

    async def events(
        self, user: User, job_id: str, *, after: int | None = None, tail: int | None = None
    ) -> AsyncGenerator[list[JobEvent], None]:
        """The job's events after seq `after` (or its last `tail` ones, or all), in batches,
        up to and including its END. Checks that the user may see the job before it returns,
        so that a refusal comes before the first byte of a stream."""
        job = await self._visible(user, job_id)
        start = after
        if start is None:
            start = 0
            if tail is not None:
                start = max(0, await self.hub.last_seq(job_id) - tail)
        if job.status.is_terminal:
            # Also when resuming past the end: events are written in batches, so a client may
            # have seen events that a crash lost, and after the restart their numbers are
            # reused. The END is always sent.
            start = max(0, min(start, await self.hub.last_seq(job_id) - 1))
        return self.hub.batches(job_id, start)

    async def stored_events(
        self, user: User, job_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[JobEvent]:
        """Up to `limit` of the job's events after seq `after`, as stored now: a page of its
        log to read (the dashboard's earlier lines, a download), not a stream to follow."""
        await self._visible(user, job_id)
        return await self.store.events_after(job_id, after, limit=limit)

    async def active_counts(self) -> dict[JobStatus, int]:
        """How many jobs are queued and running, on any worker: the store's count, the same
        from every API process."""
        return await self.store.count_jobs(JobStatus.QUEUED, JobStatus.RUNNING)

    async def store_answers(self) -> bool:
        """Whether the store answers a query within STORE_CHECK_SECONDS."""
        try:
            async with asyncio.timeout(STORE_CHECK_SECONDS):
                await self.store.ping()
        except Exception:
            return False
        return True

    async def _visible(self, user: User, job_id: str) -> Job:
        """The job if the user may see it; another user's job is JobNotFound, as an unknown id."""
        job = await self.store.get_job(job_id)
        if not can_see(user, job):
            raise JobNotFound(job_id)
        return job

    async def _group_views(self, user: User, group_ids: Sequence[str]) -> list[GroupView]:
        """The groups among `group_ids`, with their jobs' places in the queue; GroupNotFound
        for one the user may not see, as for an unknown id."""
        groups = []
        for group_id in filter(is_group_id, group_ids):
            group = JobGroup.of(group_id, await self.store.group_jobs(group_id))
            if not can_see(user, group.jobs[0]):
                raise GroupNotFound(group_id)
            groups.append(group)
        views = await self._views([job for group in groups for job in group.jobs])
        by_id = {view.job.id: view for view in views}
        return [GroupView(group, tuple(by_id[job.id] for job in group.jobs)) for group in groups]

    async def _views(self, jobs: Sequence[Job]) -> list[JobView]:
        queued = [job.id for job in jobs if job.status is JobStatus.QUEUED]
        positions = await self.store.queue_positions(queued) if queued else {}
        return [JobView(job, positions.get(job.id)) for job in jobs]

    # -- doing -----------------------------------------------------------------------------

    async def submit(
        self,
        user: User,
        archive: BinaryIO | None,
        *,
        tree: str | None = None,
        timeout_seconds: float | None = None,
        pytest_args: Sequence[str] = (),
        no_cache: bool = False,
        project: str | None = None,
        directory: str | None = None,
        python: Sequence[str] = (),
        shards: int | None = None,
    ) -> JobView | GroupView:
        """Queue a job for `user` on the zip archive read from `archive`, or on the tree of
        contents `tree` (contents.py) they uploaded; of the `project` given, else named
        from the upload or its `directory` (naming.py). A group of jobs when the `python`
        versions and `shards` asked (else those of the upload's ci.toml) make more than one
        (groups.py): they share the upload.

        InvalidUpload if it is not a safe archive or tree, ContentsMissing if the tree names
        contents the user has not sent, ProjectError if `project` cannot be a name,
        InvalidGroup for an unknown Python version or too many jobs, StorageFailure if it
        cannot be kept. Nothing is kept of a refused submission.
        """
        if tree is not None:
            path, name, config = await self._receive_tree(user, tree, project, directory)
        elif archive is not None:
            path = await asyncio.to_thread(self._receive, archive)
            name, config = None, ProjectConfig()
        else:
            raise InvalidUpload("send the project as a zip archive or as a tree of contents")
        try:
            if archive is not None:
                name = await asyncio.to_thread(
                    upload_project_name, path, self.incoming_dir, given=project, directory=directory
                )
                if not python or shards is None:
                    config = await asyncio.to_thread(upload_config, path, self.incoming_dir)
            python = python or config.python
            shards = config.shards if shards is None else shards
            asked = variants(
                python,
                shards,
                known=self.settings.python_images,
                most=self.settings.max_group_jobs,
            )
            group_id = new_group_id() if len(asked) > 1 else None
            limit = self.settings.max_job_timeout
            created = utcnow()  # one time for a group's jobs: listings keep them together
            jobs = [
                Job(
                    id=new_job_id(),
                    created_at=created,
                    timeout_seconds=min(timeout_seconds or self.settings.job_timeout, limit),
                    pytest_args=tuple(pytest_args),
                    no_cache=no_cache,
                    owner_id=user.id,
                    project=name,
                    group_id=group_id,
                    python=variant.python,
                    shard_index=variant.shard_index,
                    shard_count=variant.shard_count,
                )
                for variant in asked
            ]
            await self.blobs.put(jobs[0].upload_key, path)  # StorageFailure if it cannot
        finally:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        try:
            # Their first events before the jobs: a worker that claims one numbers from there.
            await self.store.append_events(
                [
                    JobEvent(job.id, 1, EventType.STATUS, {"status": job.status.value})
                    for job in jobs
                ]
            )
            await self.store.add_jobs(jobs)
        except BaseException:
            await self.blobs.delete(jobs[0].upload_key)
            raise
        if group_id is not None:
            return await self.get_group(user, group_id)
        return await self.get(user, jobs[0].id)

    async def _receive_tree(
        self, user: User, tree: str, project: str | None, directory: str | None
    ) -> tuple[Path, str | None, ProjectConfig]:
        """The manifest of the user's `tree`, checked, in a file to keep as the job's
        upload; the job's project name and ci.toml (read from the tree's top-level files)."""
        await asyncio.to_thread(self._check_free_space)
        steps = Stopwatch(logger, f"tree {tree[:12]}")
        files = await self.contents.manifest(user.id, tree)
        steps.lap(f"walked into a manifest of {len(files)} files")
        with tempfile.TemporaryDirectory(dir=self.incoming_dir, prefix="naming-") as folder:
            root = Path(folder)
            await self.contents.fetch_files(user.id, files, NAMING_FILES, root, MAX_FILE_BYTES)
            if project is not None:
                name = given_name(project)
            else:
                name = await asyncio.to_thread(project_name, root, directory=directory)
            config = await asyncio.to_thread(config_or_empty, root)
        steps.lap("named")
        written = await asyncio.to_thread(self._write_manifest, files)
        steps.lap("manifest written")
        return written, name, config

    def _write_manifest(self, files: list[ManifestFile]) -> Path:
        with tempfile.NamedTemporaryFile(dir=self.incoming_dir, delete=False) as target:
            target.write(encode_manifest(files))
        return Path(target.name)

    async def missing_contents(self, user: User, hashes: Sequence[str]) -> list[str]:
        """Those of `hashes` that `user` has not uploaded (another user's count for nothing)."""
        return await self.contents.missing(user.id, hashes)

    async def receive_contents(self, user: User, batch: BinaryIO) -> Received:
        """Keep the user's batch of contents (contents.py), each checked against its hash;
        StorageFailure below the free-space floor."""
        await asyncio.to_thread(self._check_free_space)
        return await self.contents.receive(user.id, batch)

    def _check_free_space(self) -> None:
        """Refuse new work below the free-space floor: what runs already carries on, with the
        space left for it (its workspace, its report, the database's writes)."""
        free_mb = shutil.disk_usage(self.incoming_dir).free // 1024**2
        if free_mb < self.settings.min_free_disk_mb:
            raise StorageFailure(
                f"the server is low on disk space ({free_mb} MiB free, it keeps "
                f"{self.settings.min_free_disk_mb} MiB free: CI_MIN_FREE_DISK_MB); try again later"
            )

    def _receive(self, archive: BinaryIO) -> Path:
        """Check the free space, copy the upload to a file of its own and check it; runs in
        a thread."""
        self._check_free_space()
        target = tempfile.NamedTemporaryFile(dir=self.incoming_dir, suffix=".zip", delete=False)  # noqa: SIM115
        path = Path(target.name)
        try:
            with target:
                shutil.copyfileobj(archive, target, COPY_CHUNK)
            check_archive(path, self.settings.archive_limits)
        except OSError as e:  # a full disk, most likely: nothing already stored is touched
            path.unlink(missing_ok=True)
            raise StorageFailure(f"the server could not store the upload: {e.strerror}") from e
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def cancel(self, user: User, job_id: str) -> Job:
        """Cancel a queued or running job; JobAlreadyFinished if it had ended.

        A running job is stopped by its worker, wherever it runs: the job is returned once
        it has ended, or after CANCEL_WAIT_SECONDS as it is then.
        """
        job = await self._visible(user, job_id)
        if job.status.is_terminal:
            raise JobAlreadyFinished(job)
        return await self._cancel_unfinished(job)

    async def cancel_group(self, user: User, group_id: str) -> GroupView:
        """Cancel every queued or running job of the group, all at once, as `cancel` does
        one; GroupAlreadyFinished if they had all ended."""
        group = (await self._group_views(user, [group_id]))[0].group
        if not group.unfinished:
            raise GroupAlreadyFinished(group)
        await asyncio.gather(*(self._cancel_unfinished(job) for job in group.unfinished))
        return await self.get_group(user, group_id)

    async def _cancel_unfinished(self, job: Job) -> Job:
        if job.status is JobStatus.QUEUED:
            cancelled = await self._cancel_queued(job, CANCELLED_REASON)
            if cancelled is not None:
                return cancelled
            job = await self.store.get_job(job.id)  # a worker took it meanwhile
        if job.status is JobStatus.RUNNING:
            after = await self.hub.last_seq(job.id)
            if await self.store.request_cancel(job.id):
                await self._wait_for_end(job.id, after)
            job = await self.store.get_job(job.id)
        return job

    async def _wait_for_end(self, job_id: str, after: int) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT_SECONDS):
                async with contextlib.aclosing(self.hub.batches(job_id, after)) as batches:
                    async for _ in batches:
                        pass

    async def _cancel_queued(self, job: Job, reason: str) -> Job | None:
        """Cancel a job that waits (it never starts): the job as cancelled, or None if it
        no longer waited (a worker took it, or another cancel came first)."""
        cancelled = transition(job, JobStatus.CANCELLED, reason=reason)
        if not await self.store.update_job(cancelled, expected=JobStatus.QUEUED):
            return None
        await self.hub.end(cancelled, say_reason=False)
        await release_upload(self.store, self.blobs, cancelled)
        return cancelled

    async def cancel_jobs_of_inactive_owners(self) -> list[Job]:
        """Cancel the queued jobs of users deactivated meanwhile (one read per owner)."""
        queued = await self.store.jobs_with_status(JobStatus.QUEUED)
        inactive = {
            owner
            for owner in {job.owner_id for job in queued}
            if not await accounts.is_active(self.store, owner)
        }
        cancelled = []
        for job in queued:
            if job.owner_id in inactive:
                done = await self._cancel_queued(job, OWNER_DEACTIVATED_REASON)
                if done is not None:
                    cancelled.append(done)
        return cancelled
