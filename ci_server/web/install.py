"""Wiring the dashboard into the app: its routes, static files and error pages."""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from ci_server.web import artifacts, live, logs, pages
from ci_server.web.access import SignInRequired
from ci_server.web.rendering import STATIC_DIR, STATIC_PREFIX, CachedStaticFiles, Pages


def install_dashboard(app: FastAPI) -> None:
    app.state.pages = Pages()
    app.state.anonymous_csrf_token = secrets.token_urlsafe(32)
    """The forms' CSRF token when authentication is off (CI_AUTH=off, one loopback host)."""
    app.include_router(pages.router)
    app.include_router(logs.router)
    app.include_router(artifacts.router)
    app.include_router(live.router)
    app.mount(STATIC_PREFIX, CachedStaticFiles(directory=STATIC_DIR), name="static")
    app.add_exception_handler(SignInRequired, _sign_in)
    app.add_exception_handler(pages.CsrfRefused, _csrf_refused)


async def _sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    return RedirectResponse(f"/sign-in?{urlencode({'after': exc.after})}", status_code=303)


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return await pages.error_page(
        request,
        403,
        "Refused",
        "This form has expired or did not come from this site: reload the page and try again.",
    )
