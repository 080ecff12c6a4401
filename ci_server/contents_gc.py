"""Cleaning up uploaded contents (contents.py) that no kept job needs any more.

Contents outlive the jobs they came with: that is their point, the next submit sends only
what changed. What is kept, per owner: every content under a tree submitted within
CI_CONTENT_KEEP_HOURS (its ref `r.<owner>.<root>` is that recent), every content a queued
or running job's manifest names, and any content younger than UPLOAD_GRACE (a client may
be between its upload and its submit). Everything else goes, and refs older than the
window too. Any process may sweep (`ContentSweeper`, every CI_CONTENT_SWEEP_SECONDS): two
sweeps at once delete the same things. A submit that raced a sweep and lost a content gets
ContentsMissing (409) and the client sends it again. A sweep that deleted contents says
when (SWEPT_KEY): the API then looks up again the files of the trees it had found whole
before (contents.py), which that sweep may have taken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ci_server.contents import (
    CONTENT_PREFIX,
    REF_PREFIX,
    SWEPT_KEY,
    Contents,
    content_key,
    is_manifest,
    read_manifest,
)
from ci_server.models import CIError, JobStatus
from ci_server.periodic import cancel_all, start_every
from ci_server.settings import Settings
from ci_server.store.blobs import BlobStore
from ci_server.store.repository import JobStore

logger = logging.getLogger(__name__)

UPLOAD_GRACE = timedelta(hours=1)
"""How long a content nothing refers to is kept: from a client's upload to its submit."""


async def sweep_contents(
    store: JobStore, contents: Contents, scratch: Path, keep_for: timedelta
) -> list[str]:
    """Delete the contents and refs no kept job needs (see the module); return their keys."""
    blobs = contents.blobs
    now = datetime.now(UTC)
    listed = await blobs.list_blobs()
    live: set[str] = set()
    doomed: list[str] = []
    for blob in listed:
        if not blob.key.startswith(REF_PREFIX):
            continue
        if blob.stored_at < now - keep_for:
            doomed.append(blob.key)
            continue
        owner, _, root = blob.key.removeprefix(REF_PREFIX).rpartition(".")
        await _keep_tree(contents, owner, root, live)
    waiting = await store.jobs_with_status(JobStatus.QUEUED, JobStatus.RUNNING)
    # A group's jobs share one upload (Job.upload_key): read once.
    for key, owner in {(job.upload_key, job.owner_id) for job in waiting}:
        if owner is not None:
            await _keep_manifest(blobs, scratch, key, owner, live)
    doomed += [
        blob.key
        for blob in listed
        if blob.key.startswith(CONTENT_PREFIX)
        and blob.key not in live
        and blob.stored_at < now - UPLOAD_GRACE
    ]
    for key in doomed:
        await blobs.delete(key)
    if any(key.startswith(CONTENT_PREFIX) for key in doomed):
        # The API trusts trees it found whole not to have lost contents since (contents.py):
        # unless this says that contents went since.
        await blobs.put_many([(SWEPT_KEY, f"{time.time():.6f}".encode())])
    return doomed


async def _keep_tree(contents: Contents, owner: str, root: str, live: set[str]) -> None:
    try:
        await contents.walk(
            owner,
            root,
            lambda tree: live.add(content_key(owner, tree)),
            lambda file: live.add(content_key(owner, file.hash)),
        )
    except CIError as e:  # a tree partly gone: what it still has is kept, the rest goes
        logger.info("contents of %s: tree %s: %s", owner, root, e)


async def _keep_manifest(
    blobs: BlobStore, scratch: Path, job_id: str, owner: str, live: set[str]
) -> None:
    path = scratch / f".gc-{job_id}"
    try:
        await blobs.fetch(job_id, path)
        if await asyncio.to_thread(is_manifest, path):
            files = await asyncio.to_thread(read_manifest, path)
            live.update(content_key(owner, file.hash) for file in files)
    except CIError:  # its upload is gone: the job is ending
        pass
    finally:
        await asyncio.to_thread(path.unlink, missing_ok=True)


class ContentSweeper:
    """Runs `sweep_contents` every CI_CONTENT_SWEEP_SECONDS for as long as it runs."""

    def __init__(self, store: JobStore, blobs: BlobStore, settings: Settings) -> None:
        self.store = store
        self.scratch = settings.resolved_data_dir / "incoming"
        self.contents = Contents(blobs, settings.archive_limits, self.scratch)
        self.settings = settings
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> list[str]:
        keep_for = timedelta(hours=self.settings.content_keep_hours)
        removed = await sweep_contents(self.store, self.contents, self.scratch, keep_for)
        if removed:
            logger.info("removed %d contents no kept job needs", len(removed))
        return removed

    async def __aenter__(self) -> ContentSweeper:
        await asyncio.to_thread(self.scratch.mkdir, parents=True, exist_ok=True)
        self._task = start_every(self.settings.content_sweep_seconds, self.sweep, "contents sweep")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None
