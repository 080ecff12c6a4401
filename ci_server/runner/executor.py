"""What runs a job's script in isolation: the interface, whatever the engine behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ci_server.models import CIError

INSTANCE_LABEL = "ci.instance"
"""Names the server (its database) that owns a container, so servers sharing an engine
never remove each other's containers."""
ENVIRONMENT_LABEL = "ci.environment"
"""Marks the images of dependency environments (its value is the environment's key)."""


class ExecutorError(CIError):
    """The executor could not run the job: the system failed, not the tests."""


@dataclass(frozen=True, slots=True)
class ContainerLimits:
    memory_bytes: int = 2 * 1024**3
    cpus: float = 1.0
    pids: int = 512


@dataclass(frozen=True, slots=True)
class RunSpec:
    job_id: str
    image: str
    script: str
    """A POSIX shell script; the project is mounted read-only at /src."""
    workspace: Path
    """The project's files; an executor may move them away (they are not there after)."""
    output_dir: Path | None = None
    """Mounted writable at /ci-output, for reports the server reads after the run."""
    env: Mapping[str, str] = field(default_factory=dict)
    limits: ContainerLimits = field(default_factory=ContainerLimits)
    user: str | None = None
    """uid:gid to run as; None: the image's default user."""
    network: bool = True
    """False: the container has no network at all (only loopback)."""
    capabilities: tuple[str, ...] = ()
    """Linux capabilities given back after all are dropped (`CHOWN`, ...): only the build
    that installs system packages has any, for apt."""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    tag: str
    created: float
    """Seconds since the epoch."""


OutputSink = Callable[[bytes], None]


class Executor(Protocol):
    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        """Run the script to its end and return its exit status, passing output on as it comes.

        Cancelling the call kills the container; it is removed whatever happens.
        """
        ...

    async def remove_orphans(self) -> int:
        """Remove containers this service left behind (after a crash); say how many."""
        ...

    async def image_id(self, image: str) -> str:
        """The content id of an image; ExecutorError when the engine does not have it."""
        ...

    async def build_image(
        self, spec: RunSpec, tag: str, labels: Mapping[str, str], on_output: OutputSink
    ) -> int:
        """Run the script like `run`; when it exits 0, keep the result as image `tag`."""
        ...

    async def environment_images(self) -> list[ImageInfo]:
        """The images carrying ENVIRONMENT_LABEL."""
        ...

    async def remove_image(self, tag: str) -> None: ...

    async def image_has_file(self, image: str, path: str) -> bool:
        """Whether the image has a file at `path` (nothing runs: the container is only
        created); ExecutorError when the engine does not have the image."""
        ...
