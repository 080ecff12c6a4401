"""Dependency environments, built once and reused: derived images of the runner image.

An environment's key is a hash of what decides it: the content id of the image it is built
on (so the Python version too), the whole build script (so a change to how environments are
built makes new ones), the content of the files they read (requirements*.txt and the files
and local package folders those name, pyproject.toml, setup.py, setup.cfg, the tox.ini test
dependencies came from, ci.toml) and the project's environment variables. A job whose key
has an image skips the install and starts pytest at once. Two jobs needing the same new
environment build it once (the second waits on the first); a failed build leaves no image;
past `keep` images the least recently used go. The images of system packages and of a
project's builds (layers.py) are kept the same way.

The cache is its owner's (a server instance): its images are tagged and labelled with it,
and it counts and removes only those, whoever else shares the engine. An image that went
missing all the same (removed by hand) is forgotten, and built again by the next `ensure`.
Without a cache, an image is built for one job alone (`build_once`) and discarded after it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ci_server.metrics import Metrics
from ci_server.runner.executor import (
    ENVIRONMENT_LABEL,
    Executor,
    ImageMissing,
    OutputSink,
    RunSpec,
)

logger = logging.getLogger(__name__)

IMAGE_REPOSITORY = "ci-env"


def environment_key(
    base_image_id: str,
    script: str,
    project: Path,
    key_files: Sequence[str],
    env: Mapping[str, str],
) -> str:
    """The key of the image `script` builds on `base_image_id`, reading `key_files` (paths
    relative to `project`; a folder counts with every file in it, `.` is the whole project)
    with `env` set."""
    digest = hashlib.sha256()
    digest.update(json.dumps([base_image_id, script, sorted(env.items())]).encode())
    for name in sorted(key_files):
        path = project / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.relative_to(project).as_posix().encode() + b"\0")
            digest.update(file.read_bytes() if file.is_file() else b"<missing>")
            digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Environment:
    image: str
    built: bool
    """False when an existing image was reused."""
    build_seconds: float | None = None
    exit_code: int = 0
    """The build script's status; not 0 means the build failed and `image` is unusable."""


UseRecorder = Callable[[str], Awaitable[None]]
"""Told each tag a job uses (retention.py prunes images unused for long, by the store's
record: an image's labels cannot change)."""


class EnvironmentCache:
    def __init__(
        self,
        executor: Executor,
        *,
        owner: str,
        keep: int,
        metrics: Metrics,
        on_use: UseRecorder | None = None,
    ) -> None:
        self.executor = executor
        self.metrics = metrics
        self.owner = owner
        self.keep = keep
        self.on_use = on_use
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_used: dict[str, float] = {}
        self._known: set[str] | None = None

    def tag(self, key: str) -> str:
        """The image of `key`: the owner is in its tag, so owners never share (nor take
        each other's) tags."""
        return f"{IMAGE_REPOSITORY}:{key[:20]}-{self.owner[:8]}"

    async def _images(self) -> set[str]:
        if self._known is None:
            images = await self.executor.environment_images()
            self._known = {image.tag for image in images}
            for image in images:
                self._last_used.setdefault(image.tag, image.created)
        return self._known

    async def ensure(
        self,
        key: str,
        build: RunSpec,
        on_output: OutputSink,
        *,
        rebuild: bool = False,
        on_wait: Callable[[], None] | None = None,
    ) -> Environment:
        """The environment for `key`, built by running `build` if need be."""
        tag = self.tag(key)
        lock = self._locks.setdefault(key, asyncio.Lock())
        if lock.locked() and on_wait is not None:
            on_wait()
        async with lock:
            images = await self._images()
            if tag in images and not rebuild:
                self._last_used[tag] = time.time()
                self.metrics.environment_reused()
                await self._record_use(tag)
                return Environment(tag, built=False)
            replaced = await self._image_id(tag) if tag in images else None
            environment = await self._build(key, tag, build, on_output)
            if environment.exit_code != 0:
                return environment
            images.add(tag)
            self._last_used[tag] = time.time()
            await self._record_use(tag)
            if replaced is not None:
                await self._remove(replaced)  # the rebuilt image took its tag
        await self._evict()
        return environment

    async def build_once(self, key: str, build: RunSpec, on_output: OutputSink) -> Environment:
        """An image for one build (`build.job_id`), outside the cache: `discard` it after
        its job."""
        tag = f"{IMAGE_REPOSITORY}:job-{build.job_id}-{self.owner[:8]}"
        return await self._build(key, tag, build, on_output)

    async def discard(self, tag: str) -> None:
        await self._remove(tag)

    async def _record_use(self, tag: str) -> None:
        if self.on_use is None:
            return
        try:
            await self.on_use(tag)
        except Exception as e:  # the store down: the job goes on, the image looks older
            logger.warning("could not record the use of environment image %s: %s", tag, e)

    def forget(self, tag: str) -> bool:
        """`tag` is gone from the engine: the next `ensure` of its key builds it again.
        False if it is none of this cache's."""
        if self._known is None or tag not in self._known:
            return False
        self._known.discard(tag)
        self._last_used.pop(tag, None)
        return True

    async def _build(
        self, key: str, tag: str, build: RunSpec, on_output: OutputSink
    ) -> Environment:
        started = time.monotonic()
        status = await self.executor.build_image(build, tag, {ENVIRONMENT_LABEL: key}, on_output)
        seconds = time.monotonic() - started
        self.metrics.environment_built(succeeded=status == 0)
        return Environment(tag, built=True, build_seconds=seconds, exit_code=status)

    async def _image_id(self, tag: str) -> str | None:
        try:
            return await self.executor.image_id(tag)
        except ImageMissing:
            return None

    async def _evict(self) -> None:
        images = await self._images()
        surplus = len(images) - self.keep
        if surplus <= 0:
            return
        oldest = sorted(images, key=lambda tag: self._last_used.get(tag, 0.0))[:surplus]
        for tag in oldest:
            if await self._remove(tag):
                images.discard(tag)
                self._last_used.pop(tag, None)

    async def _remove(self, image: str) -> bool:
        try:
            await self.executor.remove_image(image)
        except Exception as e:
            # An image a running job still uses cannot go yet: it goes next time.
            logger.warning("could not remove environment image %s: %s", image, e)
            return False
        return True
