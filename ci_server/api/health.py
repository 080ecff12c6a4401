"""The health check: answers without authentication, touches no job."""

from __future__ import annotations

from fastapi import APIRouter

from ci_server.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()
