"""When a job's upload goes: once no job that needs it is left.

A lone job's upload is its own, deleted when it ends. A group's jobs share one (kept under
the group's id, Job.upload_key): whoever ends a job of the group deletes it once no other
job of the group is queued or running. Each does so after its job's end is stored, so of
two jobs ending at once in two processes, the one that looks last sees both ended.
"""

from __future__ import annotations

from ci_server.models import Job
from ci_server.store.blobs import BlobStore
from ci_server.store.repository import JobStore


async def release_upload(store: JobStore, blobs: BlobStore, job: Job) -> None:
    """Delete the upload of `job`, which has ended, unless another job still needs it."""
    if job.group_id is not None:
        others = await store.group_jobs(job.group_id)
        if any(other.id != job.id and not other.status.is_terminal for other in others):
            return
    await blobs.delete(job.upload_key)
