"""Containers started ahead of the jobs that will run in them.

Creating and starting a container costs about 160 ms, the largest part of what a short job
costs over a bare `docker run`. So after a job's container has run, one more with the same
settings (a Profile) is made ready for the next job: created, started and waiting, with an
empty private directory mounted where the project goes. The next job with that profile
takes it and only hands it the project and the script. Each container still serves exactly
one job and goes with it: only its start moves out of the job's way.

The next container is made once a job's own has finished, not while its tests run: on two
cores, starting a container beside pytest's start-up slowed the job by a fifth.

The pool keeps at most one idle container per profile and `size` in all, dropping the least
recently wanted profile's first. It knows nothing of Docker: the executor says how to make
and how to discard one.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ci_server.runner.executor import ContainerLimits, RunSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Profile:
    """What a waiting container must share with the job that takes it: all but the script
    and the files, which the job hands over."""

    image: str
    env: tuple[tuple[str, str], ...]
    limits: ContainerLimits
    user: str | None
    network: bool
    capabilities: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: RunSpec) -> Profile:
        env = tuple(sorted(spec.env.items()))
        return cls(spec.image, env, spec.limits, spec.user, spec.network, spec.capabilities)


class WarmPool(Generic[T]):
    def __init__(
        self,
        size: int,
        make: Callable[[Profile], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
    ) -> None:
        self.size = size
        self._make = make
        self._discard = discard
        self._idle: OrderedDict[Profile, T] = OrderedDict()
        """Least recently wanted first."""
        self._making: dict[Profile, asyncio.Task[None]] = {}
        self._closed = False

    def take(self, profile: Profile) -> T | None:
        """The idle container for `profile`, if there is one."""
        return self._idle.pop(profile, None)

    def idle(self) -> list[T]:
        return list(self._idle.values())

    def replenish(self, profile: Profile) -> None:
        """Make a container for `profile` in the background, unless one waits or is coming."""
        if self.size <= 0 or self._closed or profile in self._making or profile in self._idle:
            return
        # A context of its own: the container is for the next job, not the one that ended.
        task = asyncio.create_task(
            self._make_one(profile), name=f"warm {profile.image}", context=contextvars.Context()
        )
        self._making[profile] = task
        task.add_done_callback(lambda _: self._making.pop(profile, None))

    async def _make_one(self, profile: Profile) -> None:
        try:
            item = await self._make(profile)
        except Exception as e:
            logger.warning("could not prepare a container for %s: %s", profile.image, e)
            return
        if self._closed or profile in self._idle:
            await self._let_go(item)
            return
        self._idle[profile] = item
        while len(self._idle) > self.size:
            _, oldest = self._idle.popitem(last=False)
            await self._let_go(oldest)

    async def _let_go(self, item: T) -> None:
        try:
            await self._discard(item)
        except Exception as e:  # the engine is down, say: what is left goes at the next start
            logger.warning("could not remove a waiting container: %s", e)

    async def drop(self, unwanted: Callable[[Profile, T], bool]) -> None:
        """Discard the waiting containers `unwanted` picks (say, before their image goes);
        the ones being made are waited for and judged too."""
        await asyncio.gather(*self._making.values(), return_exceptions=True)
        for profile, item in list(self._idle.items()):
            if unwanted(profile, item):
                del self._idle[profile]
                await self._let_go(item)

    async def aclose(self) -> None:
        """Discard every waiting container; make no more."""
        self._closed = True
        await asyncio.gather(*self._making.values(), return_exceptions=True)
        while self._idle:
            await self._let_go(self._idle.popitem()[1])
