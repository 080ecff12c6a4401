"""Chores a process repeats for as long as it runs: heartbeats, sweeps, re-checks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def every(seconds: float, chore: Callable[[], Awaitable[object]], what: str) -> None:
    """Run `chore` every `seconds` (after the first wait) until cancelled; a failure is
    logged and the next round tries again (the database restarting, say)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            await chore()
        except Exception:
            logger.exception("%s failed", what)


def start_every(
    seconds: float, chore: Callable[[], Awaitable[object]], what: str
) -> asyncio.Task[None]:
    return asyncio.create_task(every(seconds, chore, what), name=what)


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until they are done."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
