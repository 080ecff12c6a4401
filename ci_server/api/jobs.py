"""Job routes: submit, list, show, cancel and the live event stream (SSE)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Header,
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
from ci_server.api.schemas import (
    EVENT_STREAM_SCHEMA,
    ErrorOut,
    GroupOut,
    JobOut,
    TestResultOut,
    json_array,
)
from ci_server.jobs import GroupView, JobService, JobView
from ci_server.models import TestOutcome
from ci_server.runner.naming import MAX_PROJECT_CHARS

ERRORS = {
    400: "the upload is not a safe zip archive (or tree of contents), a content does not "
    "match its hash, or it asks for an unknown Python version or more jobs than the server "
    "runs per submission",
    401: "no API key, or not a valid one",
    403: "the key is valid, and its user may not do this (it is an admin's)",
    404: "no job (or group) with this id (for a listing: the `before` one; for an artifact: "
    "no such file in the job); another user's is unknown too",
    409: "the job (every job of the group) has already finished; for a submit: contents the "
    "tree names are not on the server (upload them, then submit again)",
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
GROUP_ID_PATTERN = r"^g-[0-9a-f]{12}$"
ENTRY_ID_PATTERN = r"^(g-)?[0-9a-f]{12}$"
JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN, description="a job id")]
KEEPALIVE_SECONDS = 15
MAX_SEQ = 2**63 - 1
"""Event seqs are SQLite integers: a resume point past this is refused (422), not looked up."""
DEFAULT_TESTS_PAGE = 500
MAX_TESTS_PAGE = 1000
"""A page of test results: up to a few MB when every test failed with a long traceback."""


def service(request: Request) -> JobService:
    return request.app.state.service


def frames(request: Request) -> SseFrames:
    return request.app.state.frames


Service = Annotated[JobService, Depends(service)]


def _job_out(view: JobView) -> JobOut:
    return JobOut.from_job(view.job, view.queue_position)


def group_out(view: GroupView) -> GroupOut:
    return GroupOut.from_view(view.group, map(_job_out, view.jobs))


def _out(view: JobView | GroupView) -> JobOut | GroupOut:
    return group_out(view) if isinstance(view, GroupView) else _job_out(view)


@router.post(
    "", status_code=201, response_model=JobOut | GroupOut, responses=documented(400, 409, 413, 507)
)
async def submit_job(
    service: Service,
    user: CurrentUser,
    archive: Annotated[
        UploadFile | None, File(description="the project, as a zip archive (or send `tree`)")
    ] = None,
    tree: Annotated[
        str | None,
        Form(
            pattern=r"^[0-9a-f]{64}$",
            description="the project, as the hash of its root tree, its contents uploaded "
            "through /uploads (instead of `archive`)",
        ),
    ] = None,
    timeout_seconds: Annotated[float | None, Form(gt=0)] = None,
    pytest_args: Annotated[list[str] | None, Form()] = None,
    no_cache: Annotated[bool, Form(description="rebuild the dependency environment")] = False,
    project: Annotated[
        str | None,
        Form(
            max_length=MAX_PROJECT_CHARS,
            description="the project's name, instead of the one its files give (or `directory`)",
        ),
    ] = None,
    directory: Annotated[
        str | None,
        Form(
            max_length=1000,
            description="the name of the folder the project was sent from: its name when "
            "its files (ci.toml, pyproject.toml, setup.cfg, setup.py) give none",
        ),
    ] = None,
    python: Annotated[
        list[str] | None,
        Form(
            description="run the suite under each of these Python versions (the server's "
            "CI_PYTHON_IMAGES), a job each; default: ci.toml's `python`, else one job in "
            "the default image"
        ),
    ] = None,
    shards: Annotated[
        int | None,
        Form(
            ge=1,
            description="split the suite over this many jobs (per Python version); default: "
            "ci.toml's `shards`, else 1",
        ),
    ] = None,
) -> JobOut | GroupOut:
    """Queue the project's tests: one job, or a group of jobs (answered as a group) when
    the Python versions and shards asked make more than one."""
    view = await service.submit(
        user,
        archive.file if archive is not None else None,
        tree=tree,
        timeout_seconds=timeout_seconds,
        pytest_args=pytest_args or (),
        no_cache=no_cache,
        project=project,
        directory=directory,
        python=[version for version in python or () if version.strip()],
        shards=shards,
    )
    return _out(view)


@router.get("", response_model=list[JobOut | GroupOut], responses=documented(404))
async def list_jobs(
    service: Service,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=ENTRY_ID_PATTERN)] = None,
    project: Annotated[
        str | None, Query(max_length=MAX_PROJECT_CHARS, description="only this project's jobs")
    ] = None,
    grouped: Annotated[
        bool, Query(description="a group of jobs as one item, holding its jobs")
    ] = False,
) -> list[JobOut | GroupOut]:
    """Newest first; pass the last job_id (or group_id) of a page as `before` to get the
    next one.

    A user sees their own jobs; an admin sees every job.
    """
    if grouped:
        runs = await service.list_runs(user, limit=limit, before=before, project=project)
        return [_out(view) for view in runs]
    views = await service.list(user, limit=limit, before=before, project=project)
    return [_job_out(view) for view in views]


@router.get("/{job_id}", response_model=JobOut, responses=documented(404))
async def get_job(job_id: JobId, service: Service, user: CurrentUser) -> JobOut:
    return _job_out(await service.get(user, job_id))


@router.get("/{job_id}/tests", response_model=list[TestResultOut], responses=documented(404))
async def list_test_results(
    job_id: JobId,
    service: Service,
    user: CurrentUser,
    limit: Annotated[int, Query(ge=1, le=MAX_TESTS_PAGE)] = DEFAULT_TESTS_PAGE,
    after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    outcome: Annotated[list[TestOutcome] | None, Query()] = None,
) -> Response:
    """Per-test results from pytest's report, in the order the tests ran, `limit` at a time.

    Pass the last `position` of a page as `after` to get the next one; `outcome` (repeated)
    keeps only the tests with those outcomes.
    """
    results = await service.test_results(
        user, job_id, after=after, limit=limit, outcomes=outcome or ()
    )
    encoded = await asyncio.to_thread(json_array, TestResultOut, results)
    return Response(encoded, media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobOut, responses=documented(404, 409))
async def cancel_job(job_id: JobId, service: Service, user: CurrentUser) -> JobOut:
    """Cancel a queued or running job. A finished job answers 409 and stays as it was.

    A running job is stopped by the worker that runs it, wherever it runs; the answer comes
    once it has ended (or after a few seconds, still running, if its worker does not answer).
    """
    return JobOut.from_job(await service.cancel(user, job_id))


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
    service: Service,
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
    start = last_event_id if last_event_id is not None else after
    # Before any byte of the stream: an unknown job (or another user's) is a 404.
    batches = await service.events(user, job_id, after=start, tail=tail)

    async def events() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                yield frames.of(job_id, batch)

    return EventSourceResponse(
        while_authenticated(request, events()),
        ping=KEEPALIVE_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
