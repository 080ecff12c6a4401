"""The health check: answers without authentication, touches no job.

For a load balancer: 200 while the process can serve, 503 while its database does not
answer. It also says the process's role, and the name of its worker if it runs one.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from ci_common.version import API_VERSION, package_version
from ci_server.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "the database does not answer"}},
)
async def health(request: Request, response: Response) -> Health:
    state = request.app.state
    store = await state.service.store_answers()
    if not store:
        response.status_code = 503
    return Health(
        status="ok" if store else "unavailable",
        role=state.role,
        store=store,
        worker=state.settings.worker_name if state.role == "api+worker" else None,
        version=package_version(),
        api_version=API_VERSION,
    )
