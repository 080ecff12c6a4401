"""The Docker executor: one throw-away container per job, through the docker SDK.

The SDK blocks, so every call runs in this executor's own thread pool, never on the event
loop; output chunks cross back to the loop with call_soon_threadsafe, coalesced.

A job's container is either created and started for it, or taken from the WarmPool: started
earlier with the same settings, its shell waiting for a script on stdin, an empty directory
of its own mounted at /src (and another at /ci-input). Taking one moves the project's files
(and the job's inputs) into those directories, names the container after the job and writes
the script to its stdin.

What a job may write is bounded: its root file system is read-only, /tmp is a tmpfs of
`limits.tmp_bytes` (the engine's, or with `project_overlay` the worker's: scratch.py), and
the files it shares with the host, its report and its artifacts' tar, are bounded like any
file it writes by RLIMIT_FSIZE (`limits.file_bytes`). Its output is read through an attach
made before it can print, and the engine keeps no log of it (log driver `none`): the
service keeps what it needs, bounded, and nothing of a job grows under the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import LogConfig, Ulimit

from ci_server.metrics import Metrics
from ci_server.runner import mounts
from ci_server.runner.executor import (
    ENVIRONMENT_LABEL,
    INPUT_DIR,
    INSTANCE_LABEL,
    OUTPUT_FILES,
    OWNER_LABEL,
    REPORT_DIR,
    WORKER_LABEL,
    ExecutorError,
    ImageInfo,
    ImageMissing,
    OutputSink,
    RunSpec,
)
from ci_server.runner.output import in_turns
from ci_server.runner.scratch import Scratch, numeric_ids
from ci_server.runner.warm import Profile, WarmPool
from ci_server.runner.workspace import remove_tree

logger = logging.getLogger(__name__)

T = TypeVar("T")

_END = object()
MAX_WAITING_BYTES = 1024**2
"""Output not yet taken by the loop past which the pump stops reading it: the container
then waits on its writes. Attached, a job floods the server as fast as it prints (the
engine's log stream, read before, set a slower pace): this keeps its backlog, in memory
and on the loop, bounded."""
WAITING_SHELL = 'script=$(cat) && exec sh -c "$script"'
"""A warm container's command: read the job's script from stdin to its end, then run it."""
OUTPUT_STREAMS = {"stdout": 1, "stderr": 1, "stream": 1}


def container_name(job_id: str, *, build: bool = False) -> str:
    """What `docker ps` shows for a job's container (and its environment build's)."""
    return f"ci-{job_id}-build" if build else f"ci-{job_id}"


@dataclass(frozen=True, slots=True)
class _Box:
    """A job's container. `slot` is the directory holding what is mounted at /src and at
    the report's place when the container was started before its job (warm), None when it
    was made for the job; `scratch` its /tmp when the worker mounted it (scratch.py);
    `output` its attached stdout and stderr, once it has a job."""

    container: Container
    slot: Path | None = None
    output: Any = None
    scratch: Scratch | None = None

    @property
    def image_id(self) -> str:
        return str(self.container.attrs.get("Image", ""))


def _move_entries(source: Path, destination: Path) -> None:
    """Move what is in `source` into `destination` (same file system: renames only)."""
    for entry in source.iterdir():
        entry.rename(destination / entry.name)


def _move_files_in(spec: RunSpec, slot: Path) -> None:
    """Hand a warm container (its `slot`) the job's project and inputs."""
    _move_entries(spec.workspace, slot / "src")
    if spec.inputs is not None:
        _move_entries(spec.inputs, slot / "input")


def _files_back(warm: _Box, spec: RunSpec) -> None:
    """Put the job's project and inputs back where they were before _move_files_in, once
    the overlay on them (if any) is gone."""
    assert warm.slot is not None
    if warm.scratch is not None:
        warm.scratch.lift()
    _move_entries(warm.slot / "src", spec.workspace)
    if spec.inputs is not None:
        _move_entries(warm.slot / "input", spec.inputs)


def _output_files(directory: Path) -> dict[str, dict[str, str]]:
    """Empty OUTPUT_FILES in `directory` for a job's container to write, as its
    unprivileged user: the volumes that mount them at REPORT_DIR."""
    volumes = {}
    for name in OUTPUT_FILES:
        file = directory / name
        file.touch()
        file.chmod(0o666)
        volumes[str(file)] = {"bind": f"{REPORT_DIR}/{name}", "mode": "rw"}
    return volumes


def _keep_output_files(directory: Path, output_dir: Path | None) -> None:
    """Put the written OUTPUT_FILES of `directory` where the job looks for them (its
    `output_dir`); an empty one was never written, and is removed."""
    for name in OUTPUT_FILES:
        file = directory / name
        if output_dir is not None and file.stat().st_size > 0:
            if file.parent != output_dir:
                file.replace(output_dir / name)
        else:
            file.unlink(missing_ok=True)


def _raw_socket(stream: Any) -> socket.socket:
    """The socket under what the SDK's attach_socket gives."""
    raw = getattr(stream, "_sock", stream)
    if not isinstance(raw, socket.socket):
        raise OSError(f"cannot use a container's stream through {type(stream).__name__}")
    return raw


def _write_stdin(container: Container, data: bytes) -> None:
    """Write `data` to a running container's stdin, then close it (the container sees EOF)."""
    stream = container.attach_socket(params={"stdin": 1, "stream": 1})
    try:
        raw = _raw_socket(stream)
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)
    finally:
        stream.close()


def _payloads(raw: socket.socket) -> Iterator[bytes]:
    """The payloads of an attached container's output stream, a frame's at a time (each
    frame is an 8-byte header, whose last 4 bytes are the size, then that many bytes; the
    engine makes one per write, often a line), read from the socket in large pieces. One
    payload per frame, as the engine's own log stream gave them: the run loop passes on a
    bounded number and size of them per turn (output.in_turns)."""
    raw.settimeout(None)  # a job may print nothing for a long while
    buffer = b""
    while chunk := raw.recv(256 * 1024):
        buffer += chunk
        at = 0
        while len(buffer) - at >= 8:
            size = int.from_bytes(buffer[at + 4 : at + 8], "big")
            if len(buffer) - at - 8 < size:
                break
            if size:
                yield buffer[at + 8 : at + 8 + size]
            at += 8 + size
        buffer = buffer[at:]


def _image_missing(image: str) -> ImageMissing:
    return ImageMissing(
        f"image {image!r} not found on the Docker engine (for the runner image: build one "
        "offline with scripts/build-runner-image.sh and set CI_RUNNER_IMAGE)",
        image,
    )


class _Handover:
    """Output chunks from the pump thread to the event loop, with one wake-up at most pending.

    Docker sends a chunk per output line. Waking the loop for each (a self-pipe write, a
    callback, a queue round trip and an on_output call per line) cost more than the line
    itself: under a job printing as fast as it can, the pump thread spent most of its time
    writing wake-up bytes. The thread now wakes the loop only when no wake-up is on its way,
    and the loop takes every chunk that arrived meanwhile. The thread waits while
    MAX_WAITING_BYTES are not taken yet.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self._chunks: list[bytes] = []
        self._waiting_bytes = 0
        self._ended = False
        self._closed = False
        self._waking = False
        self._ready = asyncio.Event()

    def put(self, chunk: object) -> None:
        """In the pump thread: a chunk of output, or _END after the last one."""
        with self._lock:
            if chunk is _END:
                self._ended = True
            else:
                assert isinstance(chunk, bytes)
                while self._waiting_bytes >= MAX_WAITING_BYTES and not self._closed:
                    self._taken.wait()
                self._chunks.append(chunk)
                self._waiting_bytes += len(chunk)
            if self._waking:
                return
            self._waking = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> tuple[list[bytes], bool]:
        """On the loop: the chunks that came since the last call, and whether that was all."""
        await self._ready.wait()
        with self._lock:
            self._ready.clear()
            self._waking = False
            chunks, self._chunks = self._chunks, []
            self._waiting_bytes = 0
            self._taken.notify()
            return chunks, self._ended

    def close(self) -> None:
        """On the loop, when it takes no more (the run ends or is cancelled): the thread no
        longer waits."""
        with self._lock:
            self._closed = True
            self._taken.notify()


class DockerExecutor:
    def __init__(
        self,
        instance: str,
        *,
        worker: str | None = None,
        max_threads: int = 32,
        base_url: str | None = None,
        warm_dir: Path | None = None,
        warm_containers: int = 0,
        project_overlay: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        """Its containers are labelled `instance` and, if given, `worker`: it removes as
        orphans only those with both. `warm_containers` > 0 keeps that many containers
        started ahead (WarmPool), their directories under `warm_dir`, which must be on the
        workspaces' file system and this executor's alone. `project_overlay` gives each
        job its project as an overlay instead of a copy (scratch.py), when the worker may
        mount (else it says so once and jobs copy), their /tmp under `warm_dir` too.
        `metrics` counts the jobs a warm container took."""
        self.instance = instance
        self.metrics = metrics or Metrics()
        self.labels = {INSTANCE_LABEL: instance} | ({WORKER_LABEL: worker} if worker else {})
        self._threads = ThreadPoolExecutor(max_threads, thread_name_prefix="docker")
        self._base_url = base_url
        self._client: docker.DockerClient | None = None
        self._removals: set[asyncio.Future[None]] = set()
        self._warm_dir = warm_dir
        self._overlay = project_overlay and warm_dir is not None
        self._pool = WarmPool[_Box](
            warm_containers if warm_dir is not None else 0,
            make=lambda profile: self._call(self._start_warm, profile),
            discard=lambda box: self._call(self._remove, box),
        )

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn` in the executor's threads, in the caller's context (as asyncio.to_thread):
        what it logs about a job says which (log_format.about_job)."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._threads, lambda: context.run(fn, *args, **kwargs))

    def _connect(self) -> docker.DockerClient:
        if self._client is None:
            try:
                if self._base_url:
                    client = docker.DockerClient(base_url=self._base_url, max_pool_size=64)
                else:
                    client = docker.from_env(max_pool_size=64)
                client.ping()
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                raise ExecutorError(f"Docker engine unreachable: {e}") from e
            self._client = client
        return self._client

    def _create(
        self,
        profile: Profile,
        command: list[str],
        volumes: dict[str, dict[str, str]],
        name: str,
        *,
        stdin: bool = False,
        build: bool = False,
        scratch: Scratch | None = None,
    ) -> Container:
        """A container for `profile`: a job's box, its /tmp the `scratch` if given, or
        (`build`) an environment's build, whose file system is the image being made and so
        stays writable."""
        client = self._connect()
        limits = profile.limits
        box: dict[str, Any] = {
            "read_only": True,
            "ulimits": [Ulimit(name="fsize", soft=limits.file_bytes, hard=limits.file_bytes)],
        }
        if scratch is None:
            box["tmpfs"] = {"/tmp": f"size={limits.tmp_bytes},mode=1777,exec"}
        else:
            volumes = volumes | scratch.volumes()
        memory = limits.memory_bytes if build else limits.container_memory_bytes
        try:
            return client.containers.create(
                profile.image,
                command=command,
                name=name,
                labels=self.labels,
                volumes=volumes,
                environment=dict(profile.env),
                mem_limit=memory,
                memswap_limit=memory,
                nano_cpus=int(limits.cpus * 1e9),
                pids_limit=limits.pids,
                user=profile.user or "",
                network_mode=None if profile.network else "none",
                # The box: no capabilities (but those a build of system packages is
                # given back for apt), no privilege gain through setuid binaries.
                cap_drop=["ALL"],
                cap_add=list(profile.capabilities) or None,
                security_opt=["no-new-privileges"],
                # The output is read through an attach: the engine need keep none of it.
                log_config=LogConfig(type=LogConfig.types.NONE),
                # stdin: open, and closed when the one writer is done (the SDK ties
                # StdinOnce to attached mode; the container still runs in the background).
                stdin_open=stdin,
                detach=not stdin,
                **({} if build else box),
            )
        except docker.errors.ImageNotFound as e:
            raise _image_missing(profile.image) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            self._client = None
            raise ExecutorError(f"Docker could not create the container: {e}") from e

    def _start(self, box: _Box, *, attach: bool = False) -> _Box:
        """Start the container; with `attach`, its output is attached first (nothing it
        prints is missed)."""
        try:
            if attach:
                box = replace(box, output=box.container.attach_socket(params=OUTPUT_STREAMS))
            box.container.start()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if box.output is not None:
                box.output.close()
            self._remove(box)
            raise ExecutorError(f"Docker could not start the container: {e}") from e
        return box

    def _launch(self, spec: RunSpec, warm: _Box | None, *, build: bool) -> _Box:
        """The job's container, running its script: the warm one if it takes the job."""
        if warm is not None and (taken := self._hand_over(warm, spec)) is not None:
            self.metrics.warm_container_taken()
            return taken
        volumes = {str(spec.workspace.resolve()): {"bind": "/src", "mode": "ro"}}
        if spec.inputs is not None:
            volumes[str(spec.inputs.resolve())] = {"bind": INPUT_DIR, "mode": "ro"}
        output_dir = None if spec.output_dir is None else spec.output_dir.resolve()
        if output_dir is not None:
            volumes |= _output_files(output_dir)
        name = container_name(spec.job_id, build=build)
        command = ["sh", "-c", spec.script]
        profile = Profile.of(spec)
        scratch = None if build else self._new_scratch(profile)
        try:
            if scratch is not None:
                self._lay_over(scratch, spec.workspace)
            container = self._create(profile, command, volumes, name, build=build, scratch=scratch)
        except BaseException:
            if scratch is not None:
                scratch.remove()
            if output_dir is not None:
                _keep_output_files(output_dir, None)  # no run: no report, not an empty one
            raise
        return self._start(_Box(container, scratch=scratch), attach=True)

    def _new_scratch(self, profile: Profile, folder: Path | None = None) -> Scratch | None:
        """A /tmp of the worker's for a container of `profile` (scratch.py), in `folder`
        (made under the warm directory if None); None when jobs copy their project: the
        overlay is off, the tests' user is not `uid:gid`, or mounting is not allowed here
        (said once, then off)."""
        ids = numeric_ids(profile.user)
        if not self._overlay or ids is None or self._warm_dir is None:
            return None
        try:
            if folder is None:
                self._warm_dir.mkdir(parents=True, exist_ok=True)
                folder = Path(tempfile.mkdtemp(dir=self._warm_dir, prefix="scratch-"))
            else:
                folder.mkdir()
            return Scratch.make(folder, profile.limits.tmp_bytes, *ids)
        except OSError as e:
            logger.warning("jobs will copy their project into /tmp: cannot mount it (%s)", e)
            self._overlay = False
            if folder is not None:
                remove_tree(folder)
            return None

    @staticmethod
    def _lay_over(scratch: Scratch, lower: Path) -> None:
        """The project's overlay on `scratch`; if it cannot be mounted, the job copies its
        project as without one (its /tmp/project is empty)."""
        try:
            scratch.lay_over(lower)
        except OSError as e:
            logger.warning("the job copies its project: cannot mount its overlay (%s)", e)

    def _start_warm(self, profile: Profile) -> _Box:
        assert self._warm_dir is not None
        self._warm_dir.mkdir(parents=True, exist_ok=True)
        slot = Path(tempfile.mkdtemp(dir=self._warm_dir))
        (slot / "src").mkdir()
        (slot / "input").mkdir()
        volumes = {
            str(slot / "src"): {"bind": "/src", "mode": "ro"},
            str(slot / "input"): {"bind": INPUT_DIR, "mode": "ro"},
            **_output_files(slot),
        }
        scratch = self._new_scratch(profile, slot / "scratch")
        try:
            command = ["sh", "-c", WAITING_SHELL]
            name = f"ci-warm-{slot.name}"
            container = self._create(profile, command, volumes, name, stdin=True, scratch=scratch)
        except BaseException:
            if scratch is not None:
                scratch.remove()
            remove_tree(slot)
            raise
        return self._start(_Box(container, slot, scratch=scratch))

    def _hand_over(self, warm: _Box, spec: RunSpec) -> _Box | None:
        """Give a waiting container the job: its files, its name, its script.

        None if it cannot take it (it died meanwhile, say): it is then removed, and the
        project's files are where they were.
        """
        assert warm.slot is not None
        container = warm.container
        try:
            container.reload()
            if container.status == "running":
                container.rename(container_name(spec.job_id))
                _move_files_in(spec, warm.slot)
                if warm.scratch is not None:
                    self._lay_over(warm.scratch, warm.slot / "src")
                try:
                    output = container.attach_socket(params=OUTPUT_STREAMS)
                    try:
                        _write_stdin(container, spec.script.encode())
                    except BaseException:
                        output.close()
                        raise
                    return replace(warm, output=output)
                except (
                    docker.errors.DockerException,
                    requests.exceptions.RequestException,
                    OSError,
                ):
                    _files_back(warm, spec)
                    raise
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            logger.warning("a warm container could not take job %s: %s", spec.job_id, e)
        try:
            self._remove(warm)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            logger.warning("could not remove a warm container: %s", e)  # gone at next start
        return None

    def _pump_output(self, box: _Box, deliver: Callable[[object], None]) -> None:
        try:
            for payload in _payloads(_raw_socket(box.output)):
                deliver(payload)
        finally:
            box.output.close()
            deliver(_END)

    def _finish_files(self, box: _Box, spec: RunSpec) -> None:
        """After the run: the report and artifacts where the job looks for them (if
        written), and the project's files back in the workspace, free of its overlay."""
        if box.slot is not None:
            _keep_output_files(box.slot, spec.output_dir)
            _files_back(box, spec)
        else:
            if box.scratch is not None:
                box.scratch.lift()
            if spec.output_dir is not None:
                _keep_output_files(spec.output_dir, spec.output_dir)

    def _wait(self, container: Container) -> int:
        return int(container.wait()["StatusCode"])

    def _remove(self, box: _Box) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            box.container.remove(force=True)
        if box.scratch is not None:
            box.scratch.remove()
        if box.slot is not None:
            remove_tree(box.slot)

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        profile = Profile.of(spec)
        status = await self._run(spec, on_output, warm=self._pool.take(profile))
        self._pool.replenish(profile)  # for the next job, now that this one's tests are done
        return status

    async def build_image(
        self, spec: RunSpec, tag: str, labels: Mapping[str, str], on_output: OutputSink
    ) -> int:
        return await self._run(spec, on_output, keep_as=(tag, labels))

    def _commit(self, container: Container, tag: str, labels: Mapping[str, str]) -> None:
        repository, _, version = tag.partition(":")
        # The build container's own labels would pass to the image, and from it to every
        # container started from it: blank them.
        blanked = dict.fromkeys(self.labels, "")
        owned = {**labels, OWNER_LABEL: self.instance}
        changes = [f"LABEL {json.dumps(k)}={json.dumps(v)}" for k, v in (blanked | owned).items()]
        try:
            container.commit(repository=repository, tag=version or "latest", changes=changes)
        except docker.errors.DockerException as e:
            raise ExecutorError(f"Docker could not save the environment image: {e}") from e

    async def _run(
        self,
        spec: RunSpec,
        on_output: OutputSink,
        *,
        keep_as: tuple[str, Mapping[str, str]] | None = None,
        warm: _Box | None = None,
    ) -> int:
        launching = asyncio.ensure_future(
            self._call(self._launch, spec, warm, build=keep_as is not None)
        )
        try:
            box = await asyncio.shield(launching)
        except asyncio.CancelledError:
            # Cancelled while the engine starts it: wait for the container, then remove it.
            with contextlib.suppress(Exception):
                box = await launching
                if box.output is not None:
                    box.output.close()
                self._schedule_removal(box)
            raise
        container = box.container
        loop = asyncio.get_running_loop()
        output = _Handover(loop)
        try:
            pump = loop.run_in_executor(self._threads, self._pump_output, box, output.put)
            ended = False
            while not ended:
                chunks, ended = await output.take()
                for turn, data in enumerate(in_turns(chunks)):
                    if turn:
                        await asyncio.sleep(0)  # a backlog goes in turns, not in one block
                    on_output(data)
            await pump
            status = await self._call(self._wait, container)
            await self._call(self._finish_files, box, spec)
            if keep_as is not None and status == 0:
                await self._call(self._commit, container, *keep_as)
            return status
        finally:
            # Runs on cancellation too: the kill ends the output stream and frees the thread.
            output.close()
            self._schedule_removal(box)

    def _schedule_removal(self, box: _Box) -> None:
        """Remove the container in the background, so that a finished job reports at once;
        aclose() waits for pending removals."""
        removal = asyncio.ensure_future(self._call(self._remove, box))
        self._removals.add(removal)
        removal.add_done_callback(self._removed)

    def _removed(self, removal: asyncio.Future[None]) -> None:
        self._removals.discard(removal)
        if not removal.cancelled() and removal.exception() is not None:
            logger.error("could not remove a container: %s", removal.exception())

    def _remove_orphans(self) -> int:
        client = self._connect()
        try:
            # sparse: no inspection of each container, which fails if one vanishes meanwhile.
            containers = client.containers.list(
                all=True,
                filters={"label": [f"{key}={value}" for key, value in self.labels.items()]},
                sparse=True,
            )
            for container in containers:
                self._remove(_Box(container))
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise ExecutorError(f"could not remove orphaned containers: {e}") from e
        if self._warm_dir is not None and self._warm_dir.is_dir():
            for slot in self._warm_dir.iterdir():
                # The directories of containers gone with them, and the /tmp mounted there.
                mounts.unmount_all_under(slot)
                remove_tree(slot)
        return len(containers)

    async def remove_orphans(self) -> int:
        return await self._call(self._remove_orphans)

    def _image_id(self, image: str) -> str:
        try:
            return self._connect().images.get(image).id or image
        except docker.errors.ImageNotFound as e:
            raise _image_missing(image) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            self._client = None
            raise ExecutorError(f"Docker engine unreachable: {e}") from e

    async def image_id(self, image: str) -> str:
        return await self._call(self._image_id, image)

    def _environment_images(self) -> list[ImageInfo]:
        owned = [ENVIRONMENT_LABEL, f"{OWNER_LABEL}={self.instance}"]
        images = self._connect().images.list(filters={"label": owned})
        found = []
        for image in images:
            created = datetime.fromisoformat(image.attrs["Created"].replace("Z", "+00:00"))
            found += [ImageInfo(tag, created.timestamp()) for tag in image.tags]
        return found

    async def environment_images(self) -> list[ImageInfo]:
        return await self._call(self._environment_images)

    def _remove_image(self, tag: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._connect().images.remove(tag, noprune=False)

    async def remove_image(self, tag: str) -> None:
        await self._pool.drop(lambda profile, box: tag in (profile.image, box.image_id))
        if self._removals:  # finished jobs' containers, which may still hold the image
            await asyncio.wait(set(self._removals), timeout=30)
        await self._call(self._remove_image, tag)

    def _image_has_file(self, image: str, path: str) -> bool:
        client = self._connect()
        try:
            container = client.containers.create(image, command=["true"], labels=self.labels)
        except docker.errors.ImageNotFound as e:
            raise _image_missing(image) from e
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            self._client = None
            raise ExecutorError(f"Docker could not create a container: {e}") from e
        try:
            chunks, _ = container.get_archive(path)
            for _chunk in chunks:  # read to its end: the connection goes back to the pool
                pass
        except docker.errors.NotFound:
            return False
        finally:
            self._remove(_Box(container))
        return True

    async def image_has_file(self, image: str, path: str) -> bool:
        return await self._call(self._image_has_file, image, path)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Remove the warm containers, wait for pending removals, then release the threads
        and the client."""
        await self._pool.aclose()
        if self._removals:
            await asyncio.wait(self._removals, timeout=30)
        self._threads.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
