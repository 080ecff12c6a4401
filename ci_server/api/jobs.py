"""Job routes: submit, list, show, cancel and the live event stream (SSE)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    UploadFile,
)
from fastapi import Path as PathParam
from sse_starlette import EventSourceResponse

from ci_server.api.auth import (
    UNAUTHORIZED_EVENT_SCHEMA,
    CurrentUser,
    current_user,
    while_authenticated,
)
from ci_server.api.frames import SseFrames
from ci_server.api.schemas import EVENT_STREAM_SCHEMA, ErrorOut, JobOut, TestResultOut
from ci_server.events import EventHub
from ci_server.models import Job, JobNotFound, StorageFailure, TestOutcome, TestResult
from ci_server.runner.workspace import check_archive
from ci_server.scheduler import Scheduler
from ci_server.settings import Settings
from ci_server.users import User, can_see, owner_filter

ERRORS = {
    400: "the upload is not a safe zip archive",
    401: "no API key, or not a valid one",
    404: "no job with this id (for a listing: the `before` job); another user's is unknown too",
    409: "the job has already finished",
    413: "the upload is larger than the server's limit",
    507: "the server could not store the upload (its disk is full, or below its free-space floor)",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the error answers a route may give (api/errors.py)."""
    return {status: {"model": ErrorOut, "description": ERRORS[status]} for status in statuses}


# Every route here needs an authenticated user (the dependency is cached per request).
router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Depends(current_user)],
    responses=documented(401),
)

JOB_ID_PATTERN = r"^[0-9a-f]{12}$"
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="a job id")]
KEEPALIVE_SECONDS = 15
MAX_SEQ = 2**63 - 1
"""Event seqs are SQLite integers: a resume point past this is refused (422), not looked up."""
DEFAULT_TESTS_PAGE = 500
MAX_TESTS_PAGE = 1000
"""A page of test results: up to a few MB when every test failed with a long traceback."""


def scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def hub(request: Request) -> EventHub:
    return request.app.state.hub


def frames(request: Request) -> SseFrames:
    return request.app.state.frames


def settings(request: Request) -> Settings:
    return request.app.state.settings


async def _visible_job(scheduler: Scheduler, user: User, job_id: str) -> Job:
    """The job if the user may see it; another user's job is JobNotFound, as an unknown id."""
    job = await scheduler.store.get_job(job_id)
    if not can_see(user, job):
        raise JobNotFound(job_id)
    return job


def _job_out(scheduler: Scheduler, job: Job) -> JobOut:
    return JobOut.from_job(job, scheduler.queue_positions().get(job.id))


def _check_free_space(directory: Path, settings: Settings) -> None:
    """Refuse new work below the free-space floor: what runs already carries on, with the
    space left for it (its workspace, its report, the database's writes)."""
    free_mb = shutil.disk_usage(directory).free // 1024**2
    if free_mb < settings.min_free_disk_mb:
        raise StorageFailure(
            f"the server is low on disk space ({free_mb} MiB free, it keeps "
            f"{settings.min_free_disk_mb} MiB free: CI_MIN_FREE_DISK_MB); try again later"
        )


def _save_upload(upload: UploadFile, directory: Path, settings: Settings) -> Path:
    """Check the free space, copy the spooled upload to its own file and check it; runs in
    a thread."""
    _check_free_space(directory, settings)
    target = tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False)  # noqa: SIM115
    path = Path(target.name)
    try:
        with target:
            shutil.copyfileobj(upload.file, target, 1024 * 1024)
        check_archive(path, settings.archive_limits)
    except OSError as e:  # a full disk, most likely: nothing already stored is touched
        path.unlink(missing_ok=True)
        raise StorageFailure(f"the server could not store the upload: {e.strerror}") from e
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


@router.post("", status_code=201, response_model=JobOut, responses=documented(400, 413, 507))
async def submit_job(
    archive: Annotated[UploadFile, File(description="the project, as a zip archive")],
    scheduler: Annotated[Scheduler, Depends(scheduler)],
    settings: Annotated[Settings, Depends(settings)],
    user: CurrentUser,
    timeout_seconds: Annotated[float | None, Form(gt=0)] = None,
    pytest_args: Annotated[list[str] | None, Form()] = None,
    no_cache: Annotated[bool, Form(description="rebuild the dependency environment")] = False,
) -> JobOut:
    path = await asyncio.to_thread(_save_upload, archive, scheduler.uploads_dir, settings)
    job = await scheduler.submit(
        path,
        timeout_seconds=timeout_seconds,
        pytest_args=pytest_args or (),
        no_cache=no_cache,
        owner_id=user.id,
    )
    return _job_out(scheduler, await scheduler.store.get_job(job.id))


@router.get("", response_model=list[JobOut], responses=documented(404))
async def list_jobs(
    scheduler: Annotated[Scheduler, Depends(scheduler)],
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> list[JobOut]:
    """Newest first; pass the last job_id of a page as `before` to get the next one.

    A user sees their own jobs; an admin sees every job.
    """
    jobs = await scheduler.store.list_jobs(limit=limit, before=before, owner_id=owner_filter(user))
    positions = scheduler.queue_positions()
    return [JobOut.from_job(job, positions.get(job.id)) for job in jobs]


@router.get("/{job_id}", response_model=JobOut, responses=documented(404))
async def get_job(
    job_id: JobId, scheduler: Annotated[Scheduler, Depends(scheduler)], user: CurrentUser
) -> JobOut:
    return _job_out(scheduler, await _visible_job(scheduler, user, job_id))


@router.get("/{job_id}/tests", response_model=list[TestResultOut], responses=documented(404))
async def list_test_results(
    job_id: JobId,
    scheduler: Annotated[Scheduler, Depends(scheduler)],
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=MAX_TESTS_PAGE)] = DEFAULT_TESTS_PAGE,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    outcome: Annotated[list[TestOutcome] | None, Query()] = None,
) -> Response:
    """Per-test results from pytest's report, in the order the tests ran, `limit` at a time.

    Pass the last `position` of a page as `after` to get the next one; `outcome` (repeated)
    keeps only the tests with those outcomes.
    """
    await _visible_job(scheduler, user, job_id)
    results = await scheduler.store.test_results(
        job_id, after=after, limit=limit, outcomes=outcome or ()
    )
    return Response(await asyncio.to_thread(_results_json, results), media_type="application/json")


def _results_json(results: list[TestResult]) -> bytes:
    """The page as JSON, one result at a time: a thread encoding a large page in one call
    would hold the GIL, and so stall the event loop, until it is done."""
    encoded = (TestResultOut.model_validate(result).model_dump_json() for result in results)
    return f"[{','.join(encoded)}]".encode()


@router.post("/{job_id}/cancel", response_model=JobOut, responses=documented(404, 409))
async def cancel_job(
    job_id: JobId, scheduler: Annotated[Scheduler, Depends(scheduler)], user: CurrentUser
) -> JobOut:
    """Cancel a queued or running job. A finished job answers 409 and stays as it was."""
    before = await _visible_job(scheduler, user, job_id)
    if before.status.is_terminal:
        raise HTTPException(409, f"job {job_id} has already finished: {before.status}")
    job = await scheduler.cancel(job_id)
    return JobOut.from_job(job)


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "the job's events, as Server-Sent Events, up to its `end` event "
            "(or an `unauthorized` event if the API key stops working meanwhile)",
            "content": {
                "text/event-stream": {
                    "schema": {"oneOf": [EVENT_STREAM_SCHEMA, UNAUTHORIZED_EVENT_SCHEMA]}
                }
            },
        },
        **documented(404),
    },
)
async def stream_events(
    job_id: JobId,
    request: Request,
    scheduler: Annotated[Scheduler, Depends(scheduler)],
    hub: Annotated[EventHub, Depends(hub)],
    frames: Annotated[SseFrames, Depends(frames)],
    user: CurrentUser,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="resume after this seq")
    ] = None,
    tail: Annotated[
        int | None, Query(ge=0, description="start with the last N events (0: from now)")
    ] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_SEQ)] = None,
) -> EventSourceResponse:
    """The job's events as Server-Sent Events, ending with its `end` event.

    Resume with the `Last-Event-ID` header (or `after`) to get exactly the events after it.
    The `end` event is always sent, even with `tail=0` or a resume point past the end of a
    finished job, unless the API key is revoked or its user deactivated meanwhile: then the
    stream ends within a few seconds with an `unauthorized` event.
    """
    job = await _visible_job(scheduler, user, job_id)  # before any byte of the stream
    start = last_event_id if last_event_id is not None else after
    if start is None:
        start = 0
        if tail is not None:
            start = max(0, await hub.last_seq(job_id) - tail)
    if job.status.is_terminal:
        # Also when resuming past the end: events are written in batches, so a client may
        # have seen events that a crash lost, and after the restart their numbers are reused.
        start = max(0, min(start, await hub.last_seq(job_id) - 1))

    async def events() -> AsyncGenerator[bytes, None]:
        async for batch in hub.batches(job_id, start):
            yield frames.of(job_id, batch)

    return EventSourceResponse(
        while_authenticated(request, events()),
        ping=KEEPALIVE_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
