"""Artifact routes: a job's files (its report, what ci.toml's `artifacts` matched), listed
and downloaded, from the blob store every API replica reads."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from ci_common.artifact_paths import MAX_PATH_CHARS
from ci_server.api.auth import CurrentUser, current_user
from ci_server.api.jobs import JobId, Service, documented
from ci_server.api.schemas import ArtifactOut
from ci_server.models import Artifact

router = APIRouter(
    prefix="/jobs",
    tags=["artifacts"],
    dependencies=[Depends(current_user)],
    responses=documented(401),
)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut], responses=documented(404))
async def list_artifacts(job_id: JobId, service: Service, user: CurrentUser) -> list[ArtifactOut]:
    """The job's files: its JUnit report (`junit.xml`), then those its tests wrote that
    ci.toml's `artifacts` patterns matched, within the server's limits."""
    artifacts = await service.artifacts(user, job_id)
    return [ArtifactOut.model_validate(artifact) for artifact in artifacts]


@router.get(
    "/{job_id}/artifacts/{path:path}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "the file's bytes",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        },
        **documented(404),
    },
)
async def download_artifact(
    job_id: JobId,
    path: Annotated[
        str, PathParam(max_length=MAX_PATH_CHARS, description="the artifact's path, as listed")
    ],
    service: Service,
    user: CurrentUser,
) -> StreamingResponse:
    """One artifact's bytes, as an attachment (never shown as a page: the tests wrote it)."""
    return attachment(*await service.artifact(user, job_id, path))


def attachment(artifact: Artifact, chunks: AsyncGenerator[bytes, None]) -> StreamingResponse:
    """An artifact's bytes as a download the browser never shows nor sniffs (the API's and
    the dashboard's: a job's tests wrote it)."""

    async def body() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    name = quote(artifact.path.rsplit("/", 1)[-1], safe="")
    return StreamingResponse(
        body(),
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{name}",
            "Content-Length": str(artifact.size),
            "X-Content-Type-Options": "nosniff",
        },
    )
