"""Escape attempts end to end: fixture projects (tests/fixtures/escape_*) whose tests try to
get out of the job's container and pass when they could not, submitted with the real `ci`
to a real server running real Docker.

Every job must succeed: each attempt failed inside the box. While a fork bomb and a memory
hog hold their containers at their limits, another job runs to success next to them, a
neighbour job finds nothing of theirs, and the server answers.
"""

from __future__ import annotations

import json
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
NEIGHBOUR_FILE = f"neighbour-{uuid.uuid4().hex}.txt"
"""In the fork bomb's project: the neighbour job looks for it everywhere it can."""
HOLD_TIMEOUT = 300.0
"""Until the holding jobs hold: the first job here may build the environment."""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    settings = {"CI_CONTAINER_MEMORY_MB": str(MEMORY_MB), "CI_MAX_CONCURRENT_JOBS": "4"}
    env = server_env(tmp_path_factory.mktemp("escape"), runner_image, settings)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


def escape_project(name: str, server: ServerProcess, destination: Path) -> Path:
    """The fixture, with a ci.toml telling its tests what to look for. The same ci.toml in
    every project of this module: one dependency environment for all of them."""
    project = copy_fixture(name, destination)
    host_paths = [
        server.db_path.parent,  # the server's folder: its database, its data dir
        Path(server.env["CI_DATA_DIR"]),
        REPO_ROOT,
        Path("/var/lib/docker"),
    ]
    env = {
        "ESCAPE_HOST_PATHS": ":".join(str(path) for path in host_paths),
        "ESCAPE_SERVER_URL": server.url,
        "ESCAPE_NEIGHBOUR_FILE": NEIGHBOUR_FILE,
        "ESCAPE_HOLD": "1",
    }
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
@pytest.mark.parametrize("name", ["escape_filesystem", "escape_privileges", "escape_network"])
def test_an_escape_attempt_fails_inside_the_container(
    server: ServerProcess, tmp_path: Path, name: str
) -> None:
    project = escape_project(name, server, tmp_path)
    result = run_ci("submit", "test", cwd=project, server=server)
    assert result.returncode == 0, describe(result)
    assert_every_attempt_failed(server, job_id_from_submit(result.stderr))


def output_dir(client: docker.DockerClient, job_id: str) -> Path | None:
    """The host side of a running job's /ci-output (the one way in, for the release file),
    from its container's mounts: a container started ahead has a directory of its own."""
    try:
        mounts = client.containers.get(f"ci-{job_id}").attrs["Mounts"]
    except docker.errors.NotFound:
        return None
    found = [m["Source"] for m in mounts if m["Destination"] == "/ci-output"]
    return Path(found[0]) if found else None


@pytest.mark.docker
def test_jobs_next_to_a_fork_bomb_and_a_memory_hog_run_and_see_nothing_of_them(
    server: ServerProcess, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    bomb = escape_project("escape_forkbomb", server, tmp_path)
    (bomb / NEIGHBOUR_FILE).write_text("the fork bomb's, for no other job to see\n")
    hog = escape_project("escape_memory", server, tmp_path)
    holders: dict[str, str] = {}
    for project, marker in ((bomb, "forkbomb"), (hog, "memory")):
        submitted = run_ci("submit", "test", "--async", cwd=project, server=server)
        match = ASYNC_SUBMITTED.match(submitted.stdout.strip())
        assert match, describe(submitted)
        holders[match.group(1)] = marker

    outputs: dict[str, Path] = {}
    try:
        for job_id, marker in holders.items():

            def holding(job_id: str = job_id, marker: str = marker) -> Path | None:
                if server.job(job_id)["status"] not in ("queued", "running"):
                    raise AssertionError(f"job {job_id} ended early: {server.job(job_id)}")
                output = output_dir(docker_client, job_id)
                return output if output and (output / f"{marker}.holding").exists() else None

            outputs[job_id] = wait_for(
                holding, timeout=HOLD_TIMEOUT, what=f"the {marker} job to hold its limit"
            )

        # Both at their limits: other jobs run, see nothing of them, and succeed.
        neighbour = escape_project("escape_neighbour", server, tmp_path)
        result = run_ci("submit", "test", cwd=neighbour, server=server)
        assert result.returncode == 0, describe(result)
        assert_every_attempt_failed(server, job_id_from_submit(result.stderr))
        normal = copy_fixture("passing", tmp_path)
        result = run_ci("submit", "test", cwd=normal, server=server)
        assert result.returncode == 0, describe(result)
        assert server.get("/health").json() == {"status": "ok"}
        for job_id in holders:
            assert server.job(job_id)["status"] == "running"  # they really were side by side
    finally:
        for output in outputs.values():
            (output / "release").write_text("")

    said = {"forkbomb": "fork refused after", "memory": "the allocator was stopped"}
    for job_id, marker in holders.items():
        server.wait_for_status(job_id, "succeeded", "failed", "error", "timed_out")
        assert_every_attempt_failed(server, job_id)
        log = run_ci("logs", job_id, cwd=tmp_path, server=server)
        assert said[marker] in log.stdout, describe(log)
