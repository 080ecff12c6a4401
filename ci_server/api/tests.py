"""Test history routes: each test's latest outcomes in one of the user's projects."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from ci_server.api.auth import CurrentUser, current_user
from ci_server.api.jobs import Service, documented
from ci_server.api.schemas import TestHistoryOut, json_array
from ci_server.runner.naming import MAX_PROJECT_CHARS
from ci_server.store.repository import MAX_HISTORY_RUNS

router = APIRouter(
    prefix="/tests",
    tags=["tests"],
    dependencies=[Depends(current_user)],
    responses=documented(401),
)


@router.get("", response_model=list[TestHistoryOut])
async def test_history(
    service: Service,
    user: CurrentUser,
    project: Annotated[
        str, Query(min_length=1, max_length=MAX_PROJECT_CHARS, description="the project's name")
    ],
    runs: Annotated[
        int, Query(ge=1, le=MAX_HISTORY_RUNS, description="the most runs of each test")
    ] = MAX_HISTORY_RUNS,
) -> Response:
    """Each test of the user's project of that name, by node id, with its latest outcomes
    and durations in the project's finished jobs (newest first), its failure rate and
    median duration. Projects are their owner's: an admin's are the admin's own too."""
    history = await service.test_history(user, project, runs=runs)
    encoded = await asyncio.to_thread(json_array, TestHistoryOut, history)
    return Response(encoded, media_type="application/json")
