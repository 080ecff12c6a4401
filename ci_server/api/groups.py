"""Group routes: a group of jobs (one submission's Python versions x shards), shown and
cancelled as one. Its jobs' logs and results are theirs: /jobs/{job_id}/..."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam

from ci_server.api.auth import CurrentUser, current_user
from ci_server.api.jobs import GROUP_ID_PATTERN, Service, documented, group_out
from ci_server.api.schemas import GroupOut

router = APIRouter(
    prefix="/groups",
    tags=["groups"],
    dependencies=[Depends(current_user)],
    responses=documented(401),
)

GroupId = Annotated[str, PathParam(pattern=GROUP_ID_PATTERN, description="a group id: g-...")]


@router.get("/{group_id}", response_model=GroupOut, responses=documented(404))
async def get_group(group_id: GroupId, service: Service, user: CurrentUser) -> GroupOut:
    """The group: its status, merged summary and jobs. Another user's is unknown (404)."""
    return group_out(await service.get_group(user, group_id))


@router.post("/{group_id}/cancel", response_model=GroupOut, responses=documented(404, 409))
async def cancel_group(group_id: GroupId, service: Service, user: CurrentUser) -> GroupOut:
    """Cancel every queued or running job of the group; 409 if they had all ended.

    The answer comes once they have ended (or after a few seconds if a worker does not).
    """
    return group_out(await service.cancel_group(user, group_id))
