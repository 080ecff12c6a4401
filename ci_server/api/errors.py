"""The one place where domain errors become HTTP status codes."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ci_server.models import (
    CIError,
    InvalidTransition,
    InvalidUpload,
    JobNotFound,
    StorageFailure,
    UploadTooLarge,
)
from ci_server.runner.project import ProjectError

STATUS_BY_ERROR: list[tuple[type[CIError], int]] = [
    (JobNotFound, 404),
    (UploadTooLarge, 413),
    (InvalidUpload, 400),
    (ProjectError, 400),
    (InvalidTransition, 409),
    (StorageFailure, 507),
]


def status_for(error: CIError) -> int:
    for error_type, status in STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


async def _handle_ci_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CIError)
    return JSONResponse({"detail": str(exc)}, status_code=status_for(exc))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(CIError, _handle_ci_error)
