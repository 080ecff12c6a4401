"""Warm containers: the DockerExecutor's pool against the real Docker engine.

A job's script prints $HOSTNAME, which Docker sets to the first 12 characters of the
container's id: that tells which container ran the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.errors
import pytest
from docker.models.containers import Container

from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import INPUT_DIR, INSTANCE_LABEL, ExecutorError, RunSpec
from tests.fakes import wait_until
from tests.integration.test_docker_executor import (
    cancel_and_see_it_removed,
    containers_gone,
    run,
    start_running,
    unique,
)

pytestmark = pytest.mark.docker

SHOW_HOST = "echo host=$HOSTNAME"


def warm_executor(instance: str, warm_dir: Path, size: int = 2) -> DockerExecutor:
    return DockerExecutor(instance, warm_dir=warm_dir, warm_containers=size)


@pytest.fixture
def instance(docker_client: docker.DockerClient) -> Iterator[str]:
    """A server instance id of the test's own: whatever containers it leaves go at the end."""
    instance = unique("test-warm-")
    yield instance
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}, ignore_removed=True
    )
    for container in leftovers:
        container.remove(force=True)


@pytest.fixture
async def executor(instance: str, tmp_path: Path) -> AsyncIterator[DockerExecutor]:
    executor = warm_executor(instance, tmp_path / "warm")
    yield executor
    await executor.aclose()


def new_spec(tmp_path: Path, image: str, script: str) -> RunSpec:
    """A job with a workspace and an output folder of its own."""
    job_id = unique("")
    workspace = tmp_path / job_id / "src"
    output = tmp_path / job_id / "output"
    workspace.mkdir(parents=True)
    output.mkdir()
    (workspace / "hello.txt").write_text(f"hello from {job_id}\n")
    return RunSpec(
        job_id=job_id,
        image=image,
        script=script,
        workspace=workspace,
        output_dir=output,
        env={"GREETING": "hi"},
        user="1000:1000",
        network=False,
    )


def warm_containers(client: docker.DockerClient, instance: str) -> list[Container]:
    return [
        container
        for container in client.containers.list(
            filters={"label": f"{INSTANCE_LABEL}={instance}", "name": "ci-warm-"},
            ignore_removed=True,
        )
        if container.status == "running"
    ]


async def one_warm_container(client: docker.DockerClient, instance: str) -> Container:
    """Wait for the pool to have a container ready (it is made in the background)."""
    found: list[Container] = []

    def ready() -> bool:
        found[:] = warm_containers(client, instance)
        return len(found) == 1

    await wait_until(lambda: asyncio.to_thread(ready), what="a warm container", within=60)
    return found[0]


def host_of(output: bytes) -> str:
    for line in output.decode().splitlines():
        if line.startswith("host="):
            return line.removeprefix("host=")
    raise AssertionError(f"no host line in {output!r}")


async def test_the_next_job_runs_in_the_container_started_for_it(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    script = (
        f"{SHOW_HOST}; id -u; echo $GREETING; ls /sys/class/net; cat /src/hello.txt; "
        "touch /src/new 2>/dev/null || echo read-only; echo report > /ci-output/junit.xml"
    )
    first = new_spec(tmp_path, runner_image, script)
    status, output = await run(executor, first)
    assert status == 0, output
    waiting = await one_warm_container(docker_client, executor.instance)
    assert waiting.id is not None

    second = new_spec(tmp_path, runner_image, script)
    status, output = await run(executor, second)
    assert status == 0, output
    lines = output.decode().splitlines()
    assert host_of(output) == waiting.id[:12]
    # The same box as a container made for the job: user, env, no network, files, report.
    assert lines[1:] == ["1000", "hi", "lo", f"hello from {second.job_id}", "read-only"]
    assert second.output_dir is not None
    assert (second.output_dir / "junit.xml").read_text() == "report\n"
    assert (second.workspace / "hello.txt").is_file()  # the files are back, for a next run
    await containers_gone(docker_client, second.job_id)
    # The warm container was the job's, and went with it; a new one waits.
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(waiting.id)
    assert (await one_warm_container(docker_client, executor.instance)).id != waiting.id


async def test_a_warm_container_is_named_after_its_job_and_cancelling_removes_it(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    await run(executor, new_spec(tmp_path, runner_image, "true"))
    waiting = await one_warm_container(docker_client, executor.instance)

    sleeper = new_spec(tmp_path, runner_image, "echo started; sleep 300")
    task = await start_running(executor, sleeper)
    waiting.reload()
    assert waiting.name == f"ci-{sleeper.job_id}"
    await cancel_and_see_it_removed(task, docker_client, sleeper.job_id)


async def test_the_job_reads_an_empty_stdin(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    await run(executor, new_spec(tmp_path, runner_image, "true"))
    await one_warm_container(docker_client, executor.instance)
    script = "python3 -c 'import sys; print(repr(sys.stdin.read()))'"
    status, output = await run(executor, new_spec(tmp_path, runner_image, script))
    assert (status, output) == (0, b"''\n")


async def test_a_dead_warm_container_is_passed_over(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    await run(executor, new_spec(tmp_path, runner_image, "true"))
    waiting = await one_warm_container(docker_client, executor.instance)
    waiting.kill()

    job = new_spec(tmp_path, runner_image, f"{SHOW_HOST}; cat /src/hello.txt")
    status, output = await run(executor, job)
    assert status == 0, output
    assert waiting.id is not None and host_of(output) != waiting.id[:12]
    assert f"hello from {job.job_id}" in output.decode()


async def test_other_settings_get_a_container_of_their_own(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    await run(executor, new_spec(tmp_path, runner_image, "true"))
    waiting = await one_warm_container(docker_client, executor.instance)

    other = new_spec(tmp_path, runner_image, f"{SHOW_HOST}; echo $GREETING")
    other = replace(other, env={"GREETING": "hello"})
    status, output = await run(executor, other)
    assert status == 0, output
    assert waiting.id is not None and host_of(output) != waiting.id[:12]
    assert output.decode().splitlines()[1] == "hello"
    waiting.reload()
    assert waiting.status == "running"  # still there for a job with its settings


async def test_removing_an_image_removes_its_warm_containers_first(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    tag = f"ci-test-warm:{unique('')}"
    build = new_spec(tmp_path, runner_image, "echo built > /etc/ci-built")
    build = replace(build, user="0:0", output_dir=None)
    assert await executor.build_image(build, tag, {}, lambda _: None) == 0
    try:
        await run(executor, new_spec(tmp_path, tag, "cat /etc/ci-built"))
        waiting = await one_warm_container(docker_client, executor.instance)

        await executor.remove_image(tag)
        with pytest.raises(docker.errors.ImageNotFound):
            docker_client.images.get(tag)
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(waiting.id or "")
    finally:
        for container in warm_containers(docker_client, executor.instance):
            container.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)


async def test_closing_removes_warm_containers_and_their_directories(
    instance: str, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    warm_dir = tmp_path / "warm"
    executor = warm_executor(instance, warm_dir)
    try:
        await run(executor, new_spec(tmp_path, runner_image, "true"))
        waiting = await one_warm_container(docker_client, executor.instance)
        assert any(warm_dir.iterdir())
    finally:
        await executor.aclose()
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(waiting.id or "")
    assert not any(warm_dir.iterdir())


async def test_a_restarted_server_removes_the_warm_containers_left_behind(
    instance: str, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    warm_dir = tmp_path / "warm"
    crashed = warm_executor(instance, warm_dir)
    await run(crashed, new_spec(tmp_path, runner_image, "true"))
    waiting = await one_warm_container(docker_client, instance)
    # No aclose: the process died. The next server on the same database cleans up.
    restarted = warm_executor(instance, warm_dir)
    try:
        assert await restarted.remove_orphans() >= 1
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(waiting.id or "")
        assert not any(warm_dir.iterdir())
    finally:
        await restarted.aclose()


class EngineLink:
    """A unix socket passing bytes to and from the Docker engine, which a test can cut: the
    engine goes down for an executor connected through it, and for it alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"unix://{path}"
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> EngineLink:
        self._server = await asyncio.start_unix_server(self._forward, self.path)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.cut()

    async def _engine(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if host.startswith("unix://"):
            return await asyncio.open_unix_connection(host.removeprefix("unix://"))
        address = urlsplit(host)
        return await asyncio.open_connection(address.hostname, address.port)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        engine_reader, engine_writer = await self._engine()
        self._writers |= {writer, engine_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            if sink.can_write_eof():
                with contextlib.suppress(OSError):
                    sink.write_eof()  # a half-close (the end of a container's stdin) passes

        await asyncio.gather(pipe(reader, engine_writer), pipe(engine_reader, writer))
        for each in (writer, engine_writer):
            each.close()
            self._writers.discard(each)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        self.path.unlink(missing_ok=True)


async def test_an_engine_gone_while_a_container_waits_is_an_executor_error(
    instance: str, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    async with EngineLink(tmp_path / "engine.sock") as link:
        executor = DockerExecutor(
            instance, base_url=link.url, warm_dir=tmp_path / "warm", warm_containers=2
        )
        try:
            status, output = await run(executor, new_spec(tmp_path, runner_image, "echo ran"))
            assert (status, output) == (0, b"ran\n")
            await one_warm_container(docker_client, instance)

            await link.cut()
            job = new_spec(tmp_path, runner_image, "echo ran")
            with pytest.raises(ExecutorError, match="Docker"):
                await run(executor, job)
            assert (job.workspace / "hello.txt").is_file()  # the job's files are where they were
        finally:
            await executor.aclose()  # cannot remove the waiting container: says so, and ends


async def test_a_jobs_inputs_are_read_only_at_ci_input_in_a_new_and_a_warm_container(
    executor: DockerExecutor, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    script = f"{SHOW_HOST}; cat {INPUT_DIR}/shard.json; touch {INPUT_DIR}/x 2>/dev/null || echo ro"

    def with_inputs(spec: RunSpec) -> RunSpec:
        inputs = spec.workspace.parent / "input"
        inputs.mkdir()
        (inputs / "shard.json").write_text(f'{{"job": "{spec.job_id}"}}\n')
        return replace(spec, inputs=inputs)

    first = with_inputs(new_spec(tmp_path, runner_image, script))
    status, output = await run(executor, first)
    assert (status, output.decode().splitlines()[1:]) == (0, [f'{{"job": "{first.job_id}"}}', "ro"])
    waiting = await one_warm_container(docker_client, executor.instance)
    assert waiting.id is not None

    second = with_inputs(new_spec(tmp_path, runner_image, script))
    status, output = await run(executor, second)
    assert host_of(output) == waiting.id[:12]
    assert (status, output.decode().splitlines()[1:]) == (
        0,
        [f'{{"job": "{second.job_id}"}}', "ro"],
    )
    assert second.inputs is not None and (second.inputs / "shard.json").is_file()  # back
