"""What runs a job's script in isolation: the interface, whatever the engine behind it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self

from ci_server.models import CIError

INSTANCE_LABEL = "ci.instance"
"""Names the server (its database) that owns a container, so servers sharing an engine
never remove each other's containers."""
WORKER_LABEL = "ci.worker"
"""Names the worker that started a container: workers of one database may share an engine,
and each removes only what it left."""
ENVIRONMENT_LABEL = "ci.environment"
"""Marks the images of dependency environments (its value is the environment's key)."""
OWNER_LABEL = "ci.owner"
"""Names the server that built an environment image (its instance id, as INSTANCE_LABEL):
a server counts and removes only its own. Not INSTANCE_LABEL itself, which every container
started from the image would inherit."""
INPUT_DIR = "/ci-input"
"""Where a job finds the files the server gives it (RunSpec.inputs), read-only."""
REPORT_DIR = "/ci-output"
REPORT_NAME = "junit.xml"
ARTIFACTS_NAME = "artifacts.tar"
COLLECTED_NAME = "collected.json"
OUTPUT_FILES = (REPORT_NAME, ARTIFACTS_NAME, COLLECTED_NAME)
"""A job's ways to leave files to the server: REPORT_DIR/<name> in the container,
RunSpec.output_dir/<name> on the host, each one file (bounded like any it writes): the
report, the tar of its artifacts its exit trap packs (runner/artifacts.py), and what a
shard collected (shard_plugin.py's fingerprint, runner/collected.py)."""


class ExecutorError(CIError):
    """The executor could not run the job: the system failed, not the tests."""


class ImageMissing(ExecutorError):
    """The engine has no such image (say, removed behind the server's back)."""

    def __init__(self, message: str, image: str) -> None:
        super().__init__(message)
        self.image = image


@dataclass(frozen=True, slots=True)
class ContainerLimits:
    memory_bytes: int = 2 * 1024**3
    """For the processes; /tmp comes on top of it (see `container_memory_bytes`)."""
    cpus: float = 1.0
    pids: int = 512
    tmp_bytes: int = 2 * 1024**3
    """The size of a job's /tmp, a tmpfs: its project copy, HOME and what its tests write
    there (the rest of its file system is read-only)."""
    file_bytes: int = 1024**3
    """The largest file a job may write (RLIMIT_FSIZE): its report among them, which
    bounds what it leaves on the server's disk."""

    @property
    def container_memory_bytes(self) -> int:
        """A tmpfs is memory, charged to the container that fills it: a full /tmp must not
        leave the processes less than `memory_bytes`, nor kill them before /tmp says full."""
        return self.memory_bytes + self.tmp_bytes


@dataclass(frozen=True, slots=True)
class RunSpec:
    job_id: str
    image: str
    script: str
    """A POSIX shell script; the project is mounted read-only at /src."""
    workspace: Path
    """The project's files; an executor may move them away during the run (they are back
    after it, so that the job may run again)."""
    output_dir: Path | None = None
    """Where the job's report and artifacts land: each of OUTPUT_FILES here is mounted
    writable at REPORT_DIR/<name> (at most `limits.file_bytes`), and is left only if written."""
    inputs: Path | None = None
    """Files the server gives the job (a shard's durations), mounted read-only at INPUT_DIR;
    an executor may move them away during the run, like the workspace's."""
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
    """Opened and closed like the store: `async with executor: ...`."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None:
        """Release what it holds (containers started ahead, threads, connections)."""
        ...

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        """Run the script to its end and return its exit status, passing output on as it comes.

        Cancelling the call kills the container; it is removed whatever happens. The
        workspace's files are back in place after the run. ImageMissing: no such image.
        """
        ...

    async def remove_orphans(self) -> int:
        """Remove containers this worker left behind (after a crash); say how many."""
        ...

    async def image_id(self, image: str) -> str:
        """The content id of an image; ImageMissing when the engine does not have it."""
        ...

    async def build_image(
        self, spec: RunSpec, tag: str, labels: Mapping[str, str], on_output: OutputSink
    ) -> int:
        """Run the script like `run`, but with a writable file system (the image being made)
        and no limit on files; when it exits 0, keep the result as image `tag`, labelled
        `labels` and OWNER_LABEL: this executor's owner."""
        ...

    async def environment_images(self) -> list[ImageInfo]:
        """The images carrying ENVIRONMENT_LABEL that this executor's owner built."""
        ...

    async def remove_image(self, tag: str) -> None: ...

    async def image_has_file(self, image: str, path: str) -> bool:
        """Whether the image has a file at `path` (nothing runs: the container is only
        created); ExecutorError when the engine does not have the image."""
        ...
