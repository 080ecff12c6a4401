"""How pages are made: the Jinja2 templates, their filters, the static files' URLs, and the
headers every page carries.

Templates escape everything they print (autoescape): job output, test ids, messages and
reasons are hostile. Pages allow scripts and styles from this server only (CSP), so nothing a
job prints can run even if it got past the escaping.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from ci_common.sizes import format_size
from ci_server.models import JobStatus, TestSummary

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_PREFIX = "/static"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATUS_WORDS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.TIMED_OUT: "timed out",
    JobStatus.ERROR: "error",
}


class CachedStaticFiles(StaticFiles):
    """Static files with a year's cache: their URLs carry a hash of their content
    (`static_url`), so a changed file is a new URL."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _static_versions() -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in STATIC_DIR.iterdir()
        if path.is_file()
    }


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def when(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def counts(summary: TestSummary | None) -> str:
    """'3 passed, 1 failed': the outcomes that happened, in pytest's words."""
    if summary is None:
        return ""
    parts = [
        (summary.passed, "passed"),
        (summary.failed, "failed"),
        (summary.errors, "errors"),
        (summary.skipped, "skipped"),
        (summary.xfailed, "xfailed"),
        (summary.xpassed, "xpassed"),
    ]
    return ", ".join(f"{count} {word}" for count, word in parts if count) or "no tests"


class Pages:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        versions = _static_versions()
        self.env.globals["static"] = lambda name: f"{STATIC_PREFIX}/{name}?v={versions[name]}"
        self.env.globals["statuses"] = list(JobStatus)
        self.env.filters.update(
            duration=duration,
            when=when,
            counts=counts,
            size=format_size,
            status_word=STATUS_WORDS.__getitem__,
        )

    def render(self, template: str, **context: Any) -> str:
        return self.env.get_template(template).render(**context)

    def page(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(
            self.render(template, **context), status_code=status_code, headers=PAGE_HEADERS
        )
