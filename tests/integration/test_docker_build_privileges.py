"""DockerExecutor's parts for layered images, against the real engine and runner image: the
capabilities a build of system packages is given back (and no one else), and reading a
marker file from an image without running it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import docker
import pytest

from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import ExecutorError, RunSpec
from ci_server.runner.layers import APT_CAPABILITIES
from tests.integration.test_docker_executor import executor, run, spec, unique

pytestmark = pytest.mark.docker
__all__ = ["executor", "spec"]  # fixtures

EFFECTIVE_CAPABILITIES = "grep CapEff /proc/self/status | cut -f2"
BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "SETGID": 6, "SETUID": 7}
"""Their bits in CapEff (linux/capability.h)."""


async def test_a_spec_without_capabilities_has_none_even_as_root(
    executor: DockerExecutor, spec: RunSpec
) -> None:
    status, output = await run(executor, replace(spec, script=EFFECTIVE_CAPABILITIES, user="0:0"))
    assert status == 0, output
    assert int(output.decode().strip(), 16) == 0


async def test_the_capabilities_given_back_are_those_and_no_more(
    executor: DockerExecutor, spec: RunSpec
) -> None:
    """apt's: CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID; not NET_RAW or MKNOD, which
    Docker grants by default."""
    given = replace(spec, script=EFFECTIVE_CAPABILITIES, user="0:0", capabilities=APT_CAPABILITIES)
    status, output = await run(executor, given)
    assert status == 0, output
    assert int(output.decode().strip(), 16) == sum(1 << BITS[name] for name in APT_CAPABILITIES)


async def test_not_even_root_with_apts_capabilities_can_change_the_workspace(
    executor: DockerExecutor, spec: RunSpec
) -> None:
    """A build runs as root (a system packages' build with capabilities): the workspace is
    mounted read-only all the same, so the tree a worker keeps for the project's next job
    (workspace_cache.py) stays as it was sent."""
    hello = spec.workspace / "hello.txt"
    before = (hello.read_bytes(), hello.stat().st_mode, sorted(spec.workspace.iterdir()))
    attempts = [
        "echo changed > /src/hello.txt",
        "chmod 777 /src/hello.txt",
        "chown 1234 /src/hello.txt",
        "rm /src/hello.txt",
        "mv /src/hello.txt /src/moved.txt",
        "touch /src/planted.txt",
        "mount -o remount,rw /src",
    ]
    script = "; ".join(f"{{ {a}; }} 2>/dev/null && echo CHANGED: {a!r}" for a in attempts)
    for capabilities in ((), APT_CAPABILITIES):
        as_root = replace(
            spec, job_id=unique(""), script=f"{script}; true", user="0:0", capabilities=capabilities
        )
        status, output = await run(executor, as_root)
        assert status == 0, output
        assert b"CHANGED" not in output, output
    assert (hello.read_bytes(), hello.stat().st_mode, sorted(spec.workspace.iterdir())) == before


@pytest.fixture
async def image_with_marker(
    executor: DockerExecutor, spec: RunSpec, docker_client: docker.DockerClient
) -> AsyncIterator[str]:
    tag = f"ci-test-marker:{unique('')}"
    build = replace(spec, script="mkdir -p /opt/ci-project && touch /opt/ci-project/by-source")
    status = await executor.build_image(build, tag, {}, lambda chunk: None)
    assert status == 0
    yield tag
    await asyncio.to_thread(docker_client.images.remove, tag, force=True)


async def test_a_file_in_an_image_is_found_without_running_it(
    executor: DockerExecutor, image_with_marker: str, runner_image: str
) -> None:
    assert await executor.image_has_file(image_with_marker, "/opt/ci-project/by-source")
    assert not await executor.image_has_file(runner_image, "/opt/ci-project/by-source")
    assert not await executor.image_has_file(image_with_marker, "/opt/ci-project/other")


async def test_an_unknown_image_has_no_file_but_an_error(executor: DockerExecutor) -> None:
    with pytest.raises(ExecutorError, match="not found"):
        await executor.image_has_file("ci-test-no-such-image:missing", "/etc/passwd")
