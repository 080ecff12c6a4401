"""A job's artifacts for the browser: each file the job page lists, downloaded with the
session cookie, as the API serves it (an attachment, never shown nor sniffed: the job's
tests wrote it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from ci_common.artifact_paths import MAX_PATH_CHARS
from ci_server.api.artifacts import attachment
from ci_server.api.jobs import Service
from ci_server.web.access import FetchViewer
from ci_server.web.pages import JobId

router = APIRouter(include_in_schema=False)


@router.get("/job/{job_id}/artifacts/{path:path}")
async def download_artifact(
    job_id: JobId,
    path: Annotated[str, PathParam(max_length=MAX_PATH_CHARS)],
    viewer: FetchViewer,
    service: Service,
) -> StreamingResponse:
    """Another user's job, or a path it has no artifact at, is a 404 (JobService)."""
    return attachment(*await service.artifact(viewer.user, job_id, path))
