"""Escape attempts end to end: fixture projects (tests/fixtures/escape_*) whose tests try to
get out of the job's container and pass when they could not, submitted with the real `ci`
to a real server running real Docker.

Every job must succeed: each attempt failed inside the box. While a fork bomb and a memory
hog hold their containers at their limits, another job runs to success next to them, a
neighbour job finds nothing of theirs, and the server answers. A job that fills what it may
write fails saying which limit it reached, and the host's disk never took the bytes.

A job that holds (ESCAPE_HOLD) says so in its report file, /ci-output/junit.xml, the one
file it shares with the host, and waits for `release` there.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.e2e.harness import (
    REPO_ROOT,
    ServerProcess,
    copy_fixture,
    run_ci,
    server_env,
    wait_for,
)
from tests.e2e.test_cli import ASYNC_SUBMITTED, describe, job_id_from_submit

MEMORY_MB = 256
TMP_MB = 16
FILE_MB = 8
MAX_LOG_BYTES = 4 * 1024**2
DISK_WRITE_MB = 48
"""What the escape_disk tests try to write: more than any of the limits above."""
NEIGHBOUR_FILE = f"neighbour-{uuid.uuid4().hex}.txt"
"""In the fork bomb's project: the neighbour job looks for it everywhere it can."""
HOLD_TIMEOUT = 300.0
"""Until the holding jobs hold: the first job here may build the environment."""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    settings = {
        "CI_CONTAINER_MEMORY_MB": str(MEMORY_MB),
        "CI_CONTAINER_TMP_MB": str(TMP_MB),
        "CI_CONTAINER_FILE_MB": str(FILE_MB),
        "CI_MAX_LOG_BYTES": str(MAX_LOG_BYTES),
        "CI_MAX_CONCURRENT_JOBS": "4",
    }
    env = server_env(tmp_path_factory.mktemp("escape"), runner_image, settings)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def host_listener() -> Iterator[socket.socket]:
    """A port where the host listens on every address: a job reaching the host through
    Docker's bridge would connect (the kernel accepts it, whether or not we do)."""
    with socket.create_server(("0.0.0.0", 0), backlog=16) as listener:
        yield listener


@pytest.fixture(scope="module")
def bridge_gateway(docker_client: docker.DockerClient) -> str:
    """The host's address on Docker's default bridge (the first of its subnet's)."""
    [config] = docker_client.networks.get("bridge").attrs["IPAM"]["Config"]
    return config.get("Gateway") or str(ipaddress.ip_network(config["Subnet"])[1])


@pytest.fixture(scope="module")
def escape_env(
    server: ServerProcess, host_listener: socket.socket, bridge_gateway: str
) -> dict[str, str]:
    """What the escape projects' tests look for (in their ci.toml)."""
    host_paths = [
        server.db_path.parent,  # the server's folder: its database, its data dir
        Path(server.env["CI_DATA_DIR"]),
        REPO_ROOT,
        Path("/var/lib/docker"),
    ]
    return {
        "ESCAPE_HOST_PATHS": ":".join(str(path) for path in host_paths),
        "ESCAPE_SERVER_URL": server.url,
        "ESCAPE_BRIDGE_GATEWAY": bridge_gateway,
        "ESCAPE_HOST_PORT": str(host_listener.getsockname()[1]),
        "ESCAPE_NEIGHBOUR_FILE": NEIGHBOUR_FILE,
        "ESCAPE_HOLD": "1",
        "DISK_WRITE_MB": str(DISK_WRITE_MB),
    }


def escape_project(name: str, env: dict[str, str], destination: Path) -> Path:
    """The fixture, with a ci.toml telling its tests what to look for. The same ci.toml in
    every project of this module: one dependency environment for all of them."""
    project = copy_fixture(name, destination)
    lines = ["[env]", *(f"{name} = {json.dumps(value)}" for name, value in env.items())]
    (project / "ci.toml").write_text("\n".join(lines) + "\n")
    return project


def assert_every_attempt_failed(server: ServerProcess, job_id: str) -> None:
    """The job succeeded, and every test in it ran and passed: nothing was skipped."""
    job = server.job(job_id)
    assert job["status"] == "succeeded", job
    summary = job["summary"]
    assert summary["passed"] == summary["total"] > 0, summary
    outcomes = {
        test["node_id"]: test["outcome"] for test in server.get(f"/jobs/{job_id}/tests").json()
    }
    assert set(outcomes.values()) == {"passed"}, outcomes


@pytest.mark.docker
@pytest.mark.parametrize(
    "name",
    [
        "escape_filesystem",
        "escape_privileges",
        "escape_network",
        "escape_network_no_dependencies",  # nothing to install: no environment, no build
    ],
)
def test_an_escape_attempt_fails_inside_the_container(
    server: ServerProcess,
    escape_env: dict[str, str],
    host_listener: socket.socket,
    tmp_path: Path,
    name: str,
) -> None:
    project = escape_project(name, escape_env, tmp_path)
    result = run_ci("submit", "test", cwd=project, server=server)
    assert result.returncode == 0, describe(result)
    assert_every_attempt_failed(server, job_id_from_submit(result.stderr))
    host_listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        host_listener.accept()  # no job's connection is waiting on the host


@pytest.mark.docker
def test_a_shard_cannot_change_what_the_server_gives_it(
    server: ServerProcess, escape_env: dict[str, str], tmp_path: Path
) -> None:
    project = escape_project("escape_shard_inputs", escape_env, tmp_path)
    result = run_ci("submit", "test", "--shards", "2", cwd=project, server=server)
    assert result.returncode == 0, describe(result)
    group = re.search(r"\bg-[0-9a-f]{12}\b", result.stdout + result.stderr)
    assert group is not None, describe(result)
    jobs = server.get(f"/groups/{group.group(0)}").json()["jobs"]
    assert len(jobs) == 2
    for job in jobs:
        assert_every_attempt_failed(server, job["job_id"])


def report_file(client: docker.DockerClient, job_id: str) -> Path | None:
    """The host side of a running job's /ci-output/junit.xml (the one way in, to release
    a job that holds), from its container's mounts."""
    try:
        mounts = client.containers.get(f"ci-{job_id}").attrs["Mounts"]
    except docker.errors.NotFound:
        return None
    found = [m["Source"] for m in mounts if m["Destination"] == "/ci-output/junit.xml"]
    return Path(found[0]) if found else None


def submit_async(server: ServerProcess, project: Path, *pytest_args: str) -> str:
    extra = ("--", *pytest_args) if pytest_args else ()
    submitted = run_ci("submit", "test", "--async", *extra, cwd=project, server=server)
    match = ASYNC_SUBMITTED.match(submitted.stdout.strip())
    assert match, describe(submitted)
    return match.group(1)


def wait_holding(
    server: ServerProcess, client: docker.DockerClient, job_id: str, what: str
) -> Path:
    """Wait for the job to say it holds `what`; the file that releases it."""

    def holding() -> Path | None:
        if server.job(job_id)["status"] not in ("queued", "running"):
            raise AssertionError(f"job {job_id} ended early: {server.job(job_id)}")
        report = report_file(client, job_id)
        return report if report and report.read_text() == f"{what} holding\n" else None

    return wait_for(holding, timeout=HOLD_TIMEOUT, what=f"the {what} job to hold")


def release(report: Path) -> None:
    report.write_text("release\n")


@pytest.mark.docker
def test_jobs_next_to_a_fork_bomb_and_a_memory_hog_run_and_see_nothing_of_them(
    server: ServerProcess,
    escape_env: dict[str, str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    bomb = escape_project("escape_forkbomb", escape_env, tmp_path)
    (bomb / NEIGHBOUR_FILE).write_text("the fork bomb's, for no other job to see\n")
    hog = escape_project("escape_memory", escape_env, tmp_path)
    holders = {submit_async(server, bomb): "forkbomb", submit_async(server, hog): "memory"}

    releases: list[Path] = []
    try:
        for job_id, marker in holders.items():
            releases.append(wait_holding(server, docker_client, job_id, marker))

        # Both at their limits: other jobs run, see nothing of them, and succeed.
        neighbour = escape_project("escape_neighbour", escape_env, tmp_path)
        result = run_ci("submit", "test", cwd=neighbour, server=server)
        assert result.returncode == 0, describe(result)
        assert_every_attempt_failed(server, job_id_from_submit(result.stderr))
        normal = copy_fixture("passing", tmp_path)
        result = run_ci("submit", "test", cwd=normal, server=server)
        assert result.returncode == 0, describe(result)
        assert server.get("/health").json()["status"] == "ok"
        for job_id in holders:
            assert server.job(job_id)["status"] == "running"  # they really were side by side
    finally:
        for report in releases:
            release(report)

    said = {"forkbomb": "fork refused after", "memory": "the allocator was stopped"}
    for job_id, marker in holders.items():
        server.wait_for_status(job_id, "succeeded", "failed", "error", "timed_out")
        assert_every_attempt_failed(server, job_id)
        log = run_ci("logs", job_id, cwd=tmp_path, server=server)
        assert said[marker] in log.stdout, describe(log)


def written_to_the_host(client: docker.DockerClient, job_id: str) -> int:
    """Bytes the job's container has on the host's disk: its writable layer and the
    engine's log of it."""
    [listed] = client.api.containers(filters={"name": f"ci-{job_id}"}, size=True)
    log = client.api.inspect_container(listed["Id"])["LogPath"]
    return listed.get("SizeRw", 0) + (Path(log).stat().st_size if log else 0)


def fill_and_hold(
    server: ServerProcess, client: docker.DockerClient, project: Path, test: str, what: str
) -> tuple[str, int]:
    """Run one escape_disk test, which holds once it has written: (its job's id, what its
    container had on the host's disk then)."""
    job_id = submit_async(server, project, "-k", test)
    report = wait_holding(server, client, job_id, what)
    try:
        return job_id, written_to_the_host(client, job_id)
    finally:
        release(report)


@pytest.mark.docker
def test_a_job_filling_tmp_fails_saying_so_and_the_host_keeps_its_disk(
    server: ServerProcess,
    escape_env: dict[str, str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    project = escape_project("escape_disk", escape_env, tmp_path)
    job_id, on_disk = fill_and_hold(server, docker_client, project, "fill_tmp", "tmp")
    assert on_disk < 1024**2
    job = server.wait_for_status(job_id, "succeeded", "failed", "error", "timed_out")
    assert (job["status"], job["reason"]) == ("failed", f"wrote more than {TMP_MB} MiB to /tmp")
    log = run_ci("logs", job_id, cwd=tmp_path, server=server).stdout
    assert "/tmp full after" in log
    assert "==> /tmp is full" in log


@pytest.mark.docker
def test_a_job_filling_its_report_fails_saying_so_and_the_host_keeps_its_disk(
    server: ServerProcess, escape_env: dict[str, str], tmp_path: Path
) -> None:
    project = escape_project("escape_disk", escape_env, tmp_path)
    result = run_ci("submit", "test", "--", "-k", "fill_the_report", cwd=project, server=server)
    assert result.returncode == 1, describe(result)
    job = server.job(job_id_from_submit(result.stderr))
    assert (job["status"], job["reason"]) == (
        "failed",
        f"wrote more than {FILE_MB} MiB to /ci-output",
    )
    # The container wrote to the host's file, which stopped at the limit.
    assert f"the report stopped at {FILE_MB * 1024**2} bytes" in result.stdout, describe(result)


@pytest.mark.docker
def test_nothing_but_tmp_and_the_report_is_writable(
    server: ServerProcess, escape_env: dict[str, str], tmp_path: Path
) -> None:
    project = escape_project("escape_disk", escape_env, tmp_path)
    result = run_ci(
        "submit", "test", "--", "-k", "rest_of_the_file_system", cwd=project, server=server
    )
    assert result.returncode == 0, describe(result)
    assert_every_attempt_failed(server, job_id_from_submit(result.stderr))


@pytest.mark.docker
def test_the_engine_keeps_no_more_of_a_jobs_output_than_the_service(
    server: ServerProcess,
    escape_env: dict[str, str],
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    project = escape_project("escape_disk", escape_env, tmp_path)
    job_id, on_disk = fill_and_hold(server, docker_client, project, "print_more", "log")
    assert on_disk <= MAX_LOG_BYTES  # it printed DISK_WRITE_MB
    job = server.wait_for_status(job_id, "succeeded", "failed", "error", "timed_out")
    assert job["status"] == "succeeded", job
    said = run_ci("logs", job_id, cwd=tmp_path, server=server).stderr
    assert f"log truncated: the job printed more than {MAX_LOG_BYTES} bytes" in said
