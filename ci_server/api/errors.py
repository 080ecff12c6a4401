"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ci_server.groups import GroupAlreadyFinished, GroupNotFound, InvalidGroup
from ci_server.models import (
    ArtifactNotFound,
    CIError,
    ContentsMissing,
    InvalidTransition,
    InvalidUpload,
    JobAlreadyFinished,
    JobNotFound,
    StorageFailure,
    UploadTooLarge,
)
from ci_server.runner.project import ProjectError
from ci_server.users import (
    ApiKeyNotFound,
    EmailTaken,
    InvalidAccount,
    NotAllowed,
    NotAuthenticated,
    UserInactive,
    UserNotFound,
)

STATUS_BY_ERROR: list[tuple[type[CIError], int]] = [
    (NotAuthenticated, 401),
    (NotAllowed, 403),
    (JobNotFound, 404),
    (GroupNotFound, 404),
    (ArtifactNotFound, 404),
    (UserNotFound, 404),
    (ApiKeyNotFound, 404),
    (EmailTaken, 409),
    (UserInactive, 409),
    (InvalidAccount, 400),
    (UploadTooLarge, 413),
    (InvalidUpload, 400),
    (ProjectError, 400),
    (ContentsMissing, 409),
    (InvalidGroup, 400),
    (InvalidTransition, 409),
    (JobAlreadyFinished, 409),
    (GroupAlreadyFinished, 409),
    (StorageFailure, 507),
]


def status_for(error: CIError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


def headers_for(error: CIError) -> dict[str, str] | None:
    if isinstance(error, NotAuthenticated):
        return {"WWW-Authenticate": "Bearer"}  # RFC 6750: how to authenticate
    return None


def error_response(error: CIError) -> JSONResponse:
    return JSONResponse(
        {"detail": str(error)}, status_code=status_for(error), headers=headers_for(error)
    )


async def _handle_ci_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CIError)
    return error_response(exc)


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


async def _method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    """405 naming every method the path allows: Starlette names only those of the first
    route on the path, and `GET /jobs` and `POST /jobs` are two routes."""
    assert isinstance(exc, HTTPException)
    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    headers = {"Allow": ", ".join(allowed)} if allowed else exc.headers
    return JSONResponse({"detail": exc.detail}, status_code=405, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CIError, _handle_ci_error)
    app.add_exception_handler(405, _method_not_allowed)
