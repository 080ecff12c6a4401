"""`GET /metrics` in the Prometheus text format, and the count of HTTP answers behind it.

An admin's key is needed unless CI_METRICS_PUBLIC=true (then no key at all: a scraper on
the network sees the counts, never a job). The queue's gauges are counted in the store
first, awaited here, so that rendering (prometheus_client's collectors are synchronous)
never waits on the database.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ci_server.api.auth import UPLOAD_ROUTES, bearer, resolve_user
from ci_server.api.jobs import documented
from ci_server.metrics import CONTENT_TYPE, UNMATCHED_ROUTE, Metrics
from ci_server.users import NotAllowed

router = APIRouter(tags=["operations"])

EXPOSITION: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "this process's metrics (see README, 'Running it')",
        "content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
    },
}


async def may_read_metrics(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """An admin, unless the metrics are public."""
    if request.app.state.settings.metrics_public:
        return
    user = await resolve_user(request)
    if not user.is_admin:
        raise NotAllowed("only an admin may read /metrics (or set CI_METRICS_PUBLIC=true)")


@router.get(
    "/metrics",
    response_class=Response,
    responses=EXPOSITION | documented(401, 403),
    dependencies=[Depends(may_read_metrics)],
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    counts = await state.service.active_counts()
    return Response(state.metrics.exposition(counts), media_type=CONTENT_TYPE)


class CountRequests:
    """Count every answer by method, route template (`/jobs/{job_id}`, never the raw path:
    the label's values stay few) and status, as it starts (a stream counts when it opens)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = _route_template(scope)
                self.metrics.http_answered(scope["method"], route, message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


def _route_template(scope: Scope) -> str:
    """The path template of the route that took the request; an upload's path for its
    answer before routing (a refused key's 401, a 413); else UNMATCHED_ROUTE."""
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        return getattr(route, "path", UNMATCHED_ROUTE)
    if (scope["method"], scope["path"]) in UPLOAD_ROUTES:
        return scope["path"]  # a route without parameters: its path is its template
    return UNMATCHED_ROUTE
