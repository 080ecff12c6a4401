"""Where a job's uploaded project waits between the API that received it and the worker
that runs it: kept at submission, read when the job runs, deleted when it ends.

`UploadFolder` keeps them as files in one folder: one host, or a folder every host mounts.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol


class Uploads(Protocol):
    async def keep(self, job_id: str, archive: Path) -> None:
        """Take over the checked archive at `archive` (it is moved away) as `job_id`'s."""
        ...

    def local_copy(self, job_id: str) -> AbstractAsyncContextManager[Path]:
        """A file of this host holding the job's archive, for as long as the context lasts;
        OSError (FileNotFoundError) if the job has none."""
        ...

    async def discard(self, job_id: str) -> None:
        """Delete the job's archive, if it has one."""
        ...


class UploadFolder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, job_id: str) -> Path:
        return self.directory / f"{job_id}.zip"

    async def keep(self, job_id: str, archive: Path) -> None:
        await asyncio.to_thread(shutil.move, archive, self.path(job_id))

    @asynccontextmanager
    async def local_copy(self, job_id: str) -> AsyncIterator[Path]:
        path = self.path(job_id)
        if not await asyncio.to_thread(path.is_file):
            raise FileNotFoundError(f"the upload of job {job_id} is missing: {path}")
        yield path

    async def discard(self, job_id: str) -> None:
        await asyncio.to_thread(self.path(job_id).unlink, missing_ok=True)
