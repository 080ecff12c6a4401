"""The jobs page, live: rows of new and changed jobs, as Server-Sent Events.

The stream reads the first page of the viewer's jobs again when the store signals a change
(a job queued, a batch of a job's events stored: every status change is an event), at most
every SETTLE_SECONDS, and at least every POLL_SECONDS (a signal can be lost; other processes'
writes to SQLite signal nothing here). It sends each row whose rendering changed, as HTML
made by the same template as the page's, oldest first: the page puts new rows on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from ci_server.api.auth import while_authenticated
from ci_server.api.jobs import KEEPALIVE_SECONDS, Service
from ci_server.jobs import JobService
from ci_server.store.signals import SignalKind
from ci_server.web.access import FetchViewer, Viewer, viewer_of
from ci_server.web.listing import JobFilter, jobs_page, owner_names
from ci_server.web.pages import Filter, Templates
from ci_server.web.rendering import Pages

router = APIRouter(include_in_schema=False)

SETTLE_SECONDS = 0.5
POLL_SECONDS = 3.0
JOB_EVENT = "job"


async def _row_changes(
    request: Request,
    service: JobService,
    templates: Pages,
    viewer: Viewer,
    only: JobFilter,
) -> AsyncGenerator[bytes, None]:
    store = request.app.state.store
    changed = asyncio.Event()
    stops = [
        await store.listen(kind, lambda _signal: changed.set())
        for kind in (SignalKind.QUEUED, SignalKind.EVENTS)
    ]
    shown: dict[str, str] = {}
    try:
        while True:
            page = await jobs_page(service, viewer.user, only=only)
            owners = await owner_names(store, page.views)
            frames = []
            for view in reversed(page.views):
                row = templates.render("_job_row.html", view=view, owners=owners)
                if shown.get(view.job.id) != row:
                    shown[view.job.id] = row
                    data = json.dumps({"id": view.job.id, "html": row})
                    frames.append(ServerSentEvent(data, event=JOB_EVENT).encode())
            if frames:
                yield b"".join(frames)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await changed.wait()
            await asyncio.sleep(SETTLE_SECONDS)  # one read for a burst of changes
            changed.clear()
    finally:
        for stop in stops:
            stop()


@router.get("/live/jobs")
async def live_jobs(
    request: Request,
    viewer: FetchViewer,
    service: Service,
    templates: Templates,
    only: Filter,
) -> EventSourceResponse:
    changes = _row_changes(request, service, templates, viewer, only)
    return EventSourceResponse(
        while_authenticated(request, changes, check=viewer_of),
        ping=KEEPALIVE_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
