"""A job's log for the browser: earlier parts on demand, the raw log as a download, and the
live stream (SSE, as the API's) authenticated by the session cookie.

A page never holds a whole large log: it follows the stream from the last TAIL_EVENTS events
and asks for EARLIER_EVENTS more at a time when the person scrolls back (`/log?before=`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from sse_starlette import EventSourceResponse

from ci_server.api.auth import while_authenticated
from ci_server.api.frames import SseFrames
from ci_server.api.jobs import KEEPALIVE_SECONDS, MAX_SEQ, Service, frames
from ci_server.jobs import JobService
from ci_server.models import EventType, JobEvent
from ci_server.users import User
from ci_server.web.access import FetchViewer, viewer_of
from ci_server.web.pages import JobId

router = APIRouter(include_in_schema=False)

EARLIER_EVENTS = 2000
DOWNLOAD_PAGE = 1000


def _event_json(event: JobEvent) -> dict[str, Any]:
    return {"seq": event.seq, "type": event.type.value, **event.data}


@router.get("/job/{job_id}/log")
async def earlier_log(
    job_id: JobId,
    viewer: FetchViewer,
    service: Service,
    before: Annotated[int, Query(ge=1, le=MAX_SEQ)],
    limit: Annotated[int, Query(ge=1, le=EARLIER_EVENTS)] = EARLIER_EVENTS,
) -> Response:
    """Up to `limit` events just before seq `before`, oldest first; `more`: whether there
    are earlier ones still."""
    start = max(0, before - 1 - limit)
    events = await service.stored_events(viewer.user, job_id, after=start, limit=limit)
    page = [_event_json(event) for event in events if event.seq < before]
    return Response(
        json.dumps({"events": page, "more": start > 0}),
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _log_text(service: JobService, user: User, job_id: str) -> AsyncIterator[bytes]:
    after = 0
    while True:
        events = await service.stored_events(user, job_id, after=after, limit=DOWNLOAD_PAGE)
        lines = [
            event.data.get("text", "") + "\n" for event in events if event.type is EventType.LOG
        ]
        if lines:
            yield "".join(lines).encode()
        if len(events) < DOWNLOAD_PAGE:
            return
        after = events[-1].seq


@router.get("/job/{job_id}/log.txt")
async def raw_log(job_id: JobId, viewer: FetchViewer, service: Service) -> Response:
    """The job's output as stored so far, as plain text (colours and all), a page at a time."""
    await service.get(viewer.user, job_id)  # an unknown job (or another's) is a 404 at once
    return StreamingResponse(
        _log_text(service, viewer.user, job_id),
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="job-{job_id}.log"',
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )


@router.get("/job/{job_id}/events")
async def live_log(
    job_id: JobId,
    request: Request,
    viewer: FetchViewer,
    service: Service,
    sse: Annotated[SseFrames, Depends(frames)],
    tail: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_SEQ)] = None,
) -> EventSourceResponse:
    """The job's events from its last `tail` ones (or after Last-Event-ID, when the browser
    reconnects), live, to its END: the API's stream, for a session."""
    batches = await service.events(viewer.user, job_id, after=last_event_id, tail=tail)

    async def events() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                yield sse.of(job_id, batch)

    return EventSourceResponse(
        while_authenticated(request, events(), check=viewer_of),
        ping=KEEPALIVE_SECONDS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
