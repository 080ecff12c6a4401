"""A job's project as an overlay of its uploaded files (runner/scratch.py), on the real
Docker engine: what the tests see and may do, what is left after them, in a container made
for the job and in a warm one.

The worker mounts (these tests run as root, as the worker does); a job runs as 1000:1000.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import pytest

from ci_server.runner import mounts
from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import INSTANCE_LABEL, ContainerLimits, RunSpec
from ci_server.runner.project import InstallPlan
from ci_server.runner.scratch import Scratch, numeric_ids
from ci_server.runner.scripts import job_script
from ci_server.runner.workspace import give_to
from tests.fakes import wait_until
from tests.integration.test_docker_executor import run, unique
from tests.integration.test_warm_containers import one_warm_container

pytestmark = pytest.mark.docker

TEST_WRITING_INTO_ITS_PROJECT = """
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def test_it_sees_its_files_and_writes_where_it_likes():
    assert PROJECT == Path("/tmp/project")
    assert (PROJECT / "data" / "input.txt").read_text() == "as uploaded\\n"
    (PROJECT / "data" / "input.txt").write_text("changed by the test\\n")
    (PROJECT / "data" / "new" / "deep").mkdir(parents=True)
    (PROJECT / "data" / "new" / "deep" / "out.txt").write_text("written\\n")
    (PROJECT / "tests" / "gone.txt").unlink()
"""
NOTHING = InstallPlan("nothing to install", (), (), ())


@pytest.fixture
def instance(docker_client: docker.DockerClient) -> Iterator[str]:
    instance = unique("test-scratch-")
    yield instance
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}, ignore_removed=True
    ):
        container.remove(force=True)


@pytest.fixture
async def executor(instance: str, tmp_path: Path) -> AsyncIterator[DockerExecutor]:
    executor = DockerExecutor(
        instance, warm_dir=tmp_path / "warm", warm_containers=1, project_overlay=True
    )
    yield executor
    await executor.aclose()


def project_spec(
    tmp_path: Path, image: str, script: str, limits: ContainerLimits | None = None
) -> RunSpec:
    """A job whose workspace holds a small project, written as the worker writes one (as
    root, files 0644 and folders 0755, then given to the tests' user, 1000:1000)."""
    job_id = unique("")
    workspace = tmp_path / job_id / "src"
    (workspace / "data").mkdir(parents=True)
    (workspace / "tests").mkdir()
    (workspace / "data" / "input.txt").write_text("as uploaded\n")
    (workspace / "tests" / "gone.txt").write_text("deleted by the test\n")
    (workspace / "tests" / "test_writes.py").write_text(TEST_WRITING_INTO_ITS_PROJECT)
    give_to(workspace, 1000, 1000)
    output = tmp_path / job_id / "output"
    output.mkdir()
    return RunSpec(
        job_id=job_id,
        image=image,
        script=script,
        workspace=workspace,
        output_dir=output,
        env={},
        user="1000:1000",
        network=False,
        limits=limits or ContainerLimits(),
    )


def files_of(tree: Path) -> dict[str, str]:
    return {
        path.relative_to(tree).as_posix(): path.read_text()
        for path in sorted(tree.rglob("*"))
        if path.is_file()
    }


def mounted_under(folder: Path) -> list[Path]:
    return mounts.mounts_under(folder) if folder.exists() else []


async def test_the_tests_write_into_their_project_and_the_upload_stays_as_sent(
    executor: DockerExecutor, tmp_path: Path, runner_image: str
) -> None:
    script = job_script(NOTHING, ["-q", "-p", "no:cacheprovider"], environment=False)
    # The first job gets a container made for it, the second the warm one made after.
    for _ in range(2):
        spec = project_spec(tmp_path, runner_image, script)
        sent = files_of(spec.workspace)
        status, output = await run(executor, spec)
        assert status == 0, output.decode()
        assert b"1 passed" in output
        assert files_of(spec.workspace) == sent  # for the next job of the project, as sent
        await wait_until(
            lambda: not mounted_under(tmp_path / "warm") or _only_waiting(tmp_path / "warm"),
            what="the job's mounts gone",
        )


def _only_waiting(warm: Path) -> bool:
    """Only the waiting container's /tmp is mounted (one tmpfs, no overlay)."""
    return all(point.name == "scratch" for point in mounts.mounts_under(warm))


async def test_the_project_is_an_overlay_and_its_layers_are_out_of_sight(
    executor: DockerExecutor, tmp_path: Path, runner_image: str
) -> None:
    script = (
        "grep ' /tmp/project ' /proc/mounts | cut -d' ' -f1,3; ls -A /tmp; "
        "mount -t tmpfs x /tmp/project 2>/dev/null || echo no-mount; "
        "cat /tmp/project/data/input.txt"
    )
    status, output = await run(executor, project_spec(tmp_path, runner_image, script))
    assert status == 0, output.decode()
    # The job's /tmp holds its project and nothing else: the overlay's layers are elsewhere.
    lines = output.decode().splitlines()
    assert lines == ["ci-project overlay", "project", "no-mount", "as uploaded"]


async def test_what_the_job_writes_counts_against_its_tmp(
    executor: DockerExecutor, tmp_path: Path, runner_image: str
) -> None:
    script = (
        "head -c 8000000 /dev/zero > /tmp/project/data/big.bin 2>/dev/null || echo full; "
        "wc -c < /tmp/project/data/big.bin"
    )
    spec = project_spec(tmp_path, runner_image, script, ContainerLimits(tmp_bytes=4 * 1024**2))
    status, output = await run(executor, spec)
    assert status == 0, output.decode()
    said, written = output.decode().split()
    assert said == "full" and int(written) <= 4 * 1024**2
    assert not (spec.workspace / "data" / "big.bin").exists()


async def test_a_worker_that_may_not_mount_says_so_and_its_jobs_copy(
    instance: str,
    tmp_path: Path,
    runner_image: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(mounts, "mount", refused)
    executor = DockerExecutor(instance, warm_dir=tmp_path / "warm", project_overlay=True)
    try:
        script = job_script(NOTHING, ["-q", "-p", "no:cacheprovider"], environment=False)
        for _ in range(2):
            status, output = await run(executor, project_spec(tmp_path, runner_image, script))
            assert status == 0, output.decode()
    finally:
        await executor.aclose()
    said = [r.getMessage() for r in caplog.records if "cannot mount" in r.getMessage()]
    assert said == [
        "jobs will copy their project into /tmp: cannot mount it "
        "([Errno 1] Operation not permitted)"
    ]


async def test_a_restarted_worker_unmounts_what_a_dead_one_left(
    instance: str, docker_client: docker.DockerClient, tmp_path: Path, runner_image: str
) -> None:
    warm = tmp_path / "warm"
    crashed = DockerExecutor(instance, warm_dir=warm, warm_containers=1, project_overlay=True)
    spec = project_spec(tmp_path, runner_image, "true")
    assert (await run(crashed, spec))[0] == 0
    await one_warm_container(docker_client, instance)
    assert mounted_under(warm)  # the waiting container's /tmp
    # No aclose: the process died. The next one cleans up.
    restarted = DockerExecutor(instance, warm_dir=warm, project_overlay=True)
    try:
        assert await restarted.remove_orphans() >= 1
        assert mounted_under(warm) == []
        assert not any(warm.iterdir())
    finally:
        await restarted.aclose()


def test_a_scratch_is_a_bounded_tmpfs_that_goes_whole(tmp_path: Path) -> None:
    root = tmp_path / "scratch"
    root.mkdir()
    made = Scratch.make(root, 1024**2, 1000, 1000)
    assert mounts.mounts_under(root) == [root.resolve()]
    assert os.statvfs(made.tmp).f_blocks * os.statvfs(made.tmp).f_frsize == 1024**2
    assert (made.tmp.stat().st_mode & 0o7777, made.project.stat().st_uid) == (0o1777, 1000)
    (made.tmp / "left.txt").write_text("by the job")
    made.remove()
    assert not root.exists()


@pytest.mark.parametrize(
    ("user", "ids"),
    [("1000:1000", (1000, 1000)), ("1000", None), ("tester:tester", None), (None, None)],
)
def test_only_numeric_users_get_an_overlay(user: str | None, ids: tuple[int, int] | None) -> None:
    assert numeric_ids(user) == ids
