"""The dashboard's pages: sign-in and sign-out, the jobs, one job (its artifacts listed:
web/artifacts.py serves them), and its cancel.

Pages reach jobs through the JobService only, as the API's routes do: another user's job is
JobNotFound, and its page the same 404 as an unknown id's. A cancel (and a sign-out) must
carry the session's CSRF token.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from ci_server.accounts import end_session, start_session
from ci_server.api.jobs import JOB_ID_PATTERN, MAX_SEQ, Service
from ci_server.jobs import JobService
from ci_server.models import JobAlreadyFinished, JobNotFound, JobStatus, TestOutcome
from ci_server.runner.naming import MAX_PROJECT_CHARS
from ci_server.users import NotAuthenticated, User
from ci_server.web.access import FetchViewer, PageViewer, Viewer, viewer_of
from ci_server.web.listing import JobFilter, jobs_page, owner_names
from ci_server.web.rendering import Pages
from ci_server.web.sessions import csrf_valid, drop_session_cookie, set_session_cookie

router = APIRouter(include_in_schema=False)

JobId = Annotated[str, PathParam(pattern=JOB_ID_PATTERN)]
TESTS_PAGE = 500
FAILURES_SHOWN = 100
FAILED_OUTCOMES = (TestOutcome.FAILED, TestOutcome.ERROR)


class CsrfRefused(Exception):
    """A form that changes something came without its session's CSRF token."""


def pages(request: Request) -> Pages:
    return request.app.state.pages


Templates = Annotated[Pages, Depends(pages)]


def job_filter(
    status: Annotated[JobStatus | Literal[""] | None, Query()] = None,
    project: Annotated[str | None, Query(max_length=MAX_PROJECT_CHARS)] = None,
) -> JobFilter:
    """The jobs page's filter from its query; the form's empty fields ("any") filter
    nothing."""
    return JobFilter(status or None, (project or "").strip() or None)


Filter = Annotated[JobFilter, Depends(job_filter)]


def check_csrf(viewer: Viewer, token: str | None) -> None:
    if not csrf_valid(viewer.csrf_token, token):
        raise CsrfRefused


def safe_after(after: str | None) -> str:
    """Where to go after signing in: a path of this site only (never `//elsewhere`)."""
    if after and after.startswith("/") and not after.startswith("//") and "\\" not in after:
        return after
    return "/"


async def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    try:
        viewer = await viewer_of(request)
    except NotAuthenticated:
        viewer = None
    return pages(request).page(
        "error.html", status_code=status, title=title, detail=detail, viewer=viewer
    )


# -- signing in and out -------------------------------------------------------------------


@router.get("/sign-in")
async def sign_in_page(templates: Templates, after: str | None = None) -> Response:
    return templates.page("sign_in.html", after=safe_after(after), viewer=None)


@router.post("/sign-in")
async def sign_in(
    request: Request,
    templates: Templates,
    api_key: Annotated[str, Form()],
    after: Annotated[str | None, Form()] = None,
) -> Response:
    try:
        _, token = await start_session(request.app.state.store, api_key.strip())
    except NotAuthenticated as e:
        return templates.page(
            "sign_in.html", status_code=401, error=str(e), after=safe_after(after), viewer=None
        )
    response = RedirectResponse(safe_after(after), status_code=303)
    set_session_cookie(request, response, token)
    return response


@router.post("/sign-out")
async def sign_out(request: Request, csrf_token: Annotated[str | None, Form()] = None) -> Response:
    try:
        viewer = await viewer_of(request)
    except NotAuthenticated:
        viewer = None
    if viewer is not None and viewer.session is not None:
        check_csrf(viewer, csrf_token)
        await end_session(request.app.state.store, viewer.session)
    response = RedirectResponse("/sign-in", status_code=303)
    drop_session_cookie(response)
    return response


# -- jobs ---------------------------------------------------------------------------------


@router.get("/")
async def jobs(
    request: Request,
    viewer: PageViewer,
    service: Service,
    templates: Templates,
    only: Filter,
    before: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
) -> Response:
    try:
        page = await jobs_page(service, viewer.user, only=only, before=before)
    except JobNotFound:  # a `before` that is not one of the user's jobs
        page = await jobs_page(service, viewer.user, only=only)
        before = None
    owners = await owner_names(request.app.state.store, page.views)
    return templates.page(
        "jobs.html",
        viewer=viewer,
        page=page,
        owners=owners,
        only=only,
        before=before,
        live=before is None,
    )


async def _details_context(
    request: Request, service: JobService, user: User, job_id: str
) -> dict[str, Any]:
    view = await service.get(user, job_id)
    owners = await owner_names(request.app.state.store, [view])
    artifacts = await service.artifacts(user, job_id)
    return {"view": view, "owners": owners, "artifacts": artifacts}


@router.get("/job/{job_id}")
async def job(
    request: Request,
    job_id: JobId,
    viewer: PageViewer,
    service: Service,
    templates: Templates,
    tests_after: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
) -> Response:
    try:
        context = await _details_context(request, service, viewer.user, job_id)
    except JobNotFound as e:  # another user's job too, word for word
        return await error_page(request, 404, "Not found", str(e))
    tests = await _tests_context(service, viewer.user, job_id, tests_after)
    finished = context["view"].job.status.is_terminal
    return templates.page("job.html", viewer=viewer, finished=finished, **context, **tests)


async def _tests_context(
    service: JobService, user: User, job_id: str, after: int | None
) -> dict[str, Any]:
    failures = []
    if after is None:
        failures = await service.test_results(
            user, job_id, limit=FAILURES_SHOWN + 1, outcomes=FAILED_OUTCOMES
        )
    results = await service.test_results(user, job_id, after=after, limit=TESTS_PAGE)
    return {
        "job_id": job_id,
        "failures": failures[:FAILURES_SHOWN],
        "more_failures": len(failures) > FAILURES_SHOWN,
        "results": results,
        "next_tests": results[-1].position if len(results) == TESTS_PAGE else None,
    }


@router.get("/job/{job_id}/details")
async def job_details(
    request: Request, job_id: JobId, viewer: FetchViewer, service: Service, templates: Templates
) -> Response:
    """The job's details section, for the page to refresh when its status changes."""
    context = await _details_context(request, service, viewer.user, job_id)
    return templates.page("_job_details.html", viewer=viewer, **context)


@router.get("/job/{job_id}/tests")
async def job_tests(
    job_id: JobId, viewer: FetchViewer, service: Service, templates: Templates
) -> Response:
    """The job's tests section, for the page to show once the job has ended."""
    view = await service.get(viewer.user, job_id)
    tests = await _tests_context(service, viewer.user, job_id, None)
    return templates.page("_tests.html", finished=view.job.status.is_terminal, **tests)


@router.post("/job/{job_id}/cancel")
async def cancel(
    request: Request,
    job_id: JobId,
    viewer: PageViewer,
    service: Service,
    csrf_token: Annotated[str | None, Form()] = None,
) -> Response:
    check_csrf(viewer, csrf_token)
    with contextlib.suppress(JobAlreadyFinished):  # the page shows how it ended
        await service.cancel(viewer.user, job_id)
    return RedirectResponse(f"/job/{job_id}", status_code=303)
