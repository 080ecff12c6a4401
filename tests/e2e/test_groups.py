"""End to end: groups of jobs (one submission, a job per Python version x shard) through the
real `ci` against a real `ci-server` running real Docker.

Both Python versions map to the one runner image here: these tests are about the group (its
streams, status, exit code, listing, cancel), not about the images.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, run_ci, start_ci
from tests.e2e.test_lifecycle import (
    HANGING_STARTED,
    CIProcess,
    ProjectFactory,
    assert_no_container_left,
)

pytestmark = pytest.mark.docker

GROUP_ID = r"g-[0-9a-f]{12}"
SUBMITTED = re.compile(rf"^Group ({GROUP_ID}) submitted: (\d+) jobs \(.*\bci wait \1$", re.M)
ASYNC_SUBMITTED = re.compile(rf"^Group submitted: ({GROUP_ID})$")


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


@pytest.fixture
def server(make_server: ServerFactory, runner_image: str) -> ServerProcess:
    return make_server(CI_PYTHON_IMAGES=f"3.11={runner_image},3.12={runner_image}")


@pytest.fixture
def start_cli() -> Iterator[type[CIProcess]]:
    started: list[CIProcess] = []

    class Started(CIProcess):
        def __init__(self, process: subprocess.Popen[str]) -> None:
            super().__init__(process)
            started.append(self)

    yield Started
    for cli in started:
        if cli.process.poll() is None:
            cli.process.kill()
            cli.process.wait()


def announced(pattern: re.Pattern[str], text: str) -> str:
    """The group id a `ci submit test` printed."""
    match = pattern.search(text)
    assert match, text
    return match.group(1)


def group_of(server: ServerProcess, group_id: str) -> dict[str, Any]:
    response = server.get(f"/groups/{group_id}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_group_streams_every_job_prefixed_and_lists_as_one_row(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    passing = project("passing")
    result = run_ci("submit", "test", "--python", "3.11,3.12", cwd=passing, server=server)
    assert result.returncode == 0, describe(result)
    submitted = SUBMITTED.search(result.stderr)
    assert submitted and submitted.group(2) == "2", describe(result)
    group_id = submitted.group(1)

    # Each job's lines come prefixed with its label, padded like `docker compose logs`.
    for label in ("py3.11", "py3.12"):
        assert re.search(rf"^{label} \| .*3 passed", result.stdout, re.M), describe(result)
        assert re.search(rf"^{label} \| Job [0-9a-f]{{12}} succeeded", result.stderr, re.M)
    assert all(line.startswith(("py3.11 | ", "py3.12 | ")) for line in result.stdout.splitlines())
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(rf"^Group {group_id} succeeded: 6 passed in ", last), describe(result)

    group = group_of(server, group_id)
    assert [job["label"] for job in group["jobs"]] == ["py3.11", "py3.12"]
    assert group["summary"]["passed"] == 6

    table = run_ci("list", cwd=tmp_path, server=server)
    rows = table.stdout.strip().splitlines()
    assert [row.split()[:4] for row in rows[1:]] == [[group_id, "passing", "succeeded", "(2"]], (
        describe(table)
    )
    listed = json.loads(run_ci("list", "--json", cwd=tmp_path, server=server).stdout)
    assert [item["group_id"] for item in listed] == [group_id]
    assert [job["job_id"] for job in listed[0]["jobs"]] == [job["job_id"] for job in group["jobs"]]

    waited = run_ci("wait", group_id, cwd=tmp_path, server=server)
    assert waited.returncode == 0, describe(waited)
    assert waited.stderr.startswith(f"Group {group_id} succeeded: 6 passed"), describe(waited)
    replayed = run_ci("wait", "--all", group_id, cwd=tmp_path, server=server)
    assert replayed.returncode == 0, describe(replayed)
    assert re.search(r"^py3\.12 \| .*3 passed", replayed.stdout, re.M), describe(replayed)


def test_a_failing_group_exits_1_and_ci_show_names_each_job_s_failures(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    failing = project("failing")
    # Two versions: each job runs the whole suite, so both fail (two shards would split it,
    # and only the one that runs the failing test would fail: tests/e2e/test_shards.py).
    (failing / "ci.toml").write_text('python = ["3.11", "3.12"]\n')
    result = run_ci("submit", "test", cwd=failing, server=server)
    assert result.returncode == 1, describe(result)
    group_id = announced(SUBMITTED, result.stderr)
    assert re.search(rf"^Group {group_id} failed: .*\(all 2 failed\)$", result.stderr, re.M)

    shown = run_ci("show", group_id, cwd=tmp_path, server=server)
    assert shown.returncode == 0, describe(shown)
    assert shown.stdout.startswith(f"Group {group_id} failed"), describe(shown)
    jobs = group_of(server, group_id)["jobs"]
    for job in jobs:
        # Each job's details say which job they are, then its failing test.
        details = shown.stdout.split(f"Job {job['job_id']} ({job['label']}) failed")
        assert len(details) == 2, describe(shown)
        assert "FAILED tests/test_calc.py::test_subtract" in details[1].split("\nJob ")[0]


def test_another_user_s_group_is_not_found(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    submitted = run_ci(
        "submit", "test", "--async", "--shards", "2", cwd=project("passing"), server=server
    )
    match = ASYNC_SUBMITTED.match(submitted.stdout.strip())
    assert match, describe(submitted)
    group_id = match.group(1)
    bob = {"CI_API_KEY": server.add_user("bob")}
    for command in ("show", "wait", "cancel"):
        result = run_ci(command, group_id, cwd=tmp_path, server=server, env=bob)
        assert result.returncode == 2, describe(result)
        assert f"no group with id {group_id!r}" in result.stderr, describe(result)
    listed = run_ci("list", "--json", cwd=tmp_path, server=server, env=bob)
    assert json.loads(listed.stdout) == []
    assert run_ci("wait", group_id, cwd=tmp_path, server=server).returncode == 0


def test_cancelling_a_group_cancels_all_its_jobs(
    make_server: ServerFactory,
    runner_image: str,
    project: ProjectFactory,
    docker_client: docker.DockerClient,
    start_cli: type[CIProcess],
) -> None:
    server = make_server(
        CI_PYTHON_IMAGES=f"3.11={runner_image},3.12={runner_image}", CI_MAX_CONCURRENT_JOBS="1"
    )
    hanging = project("hanging")
    cli = start_cli(start_ci("submit", "test", "--python", "3.11,3.12", cwd=hanging, server=server))
    cli.wait_for_output(HANGING_STARTED)
    started = [line for line in cli.lines["stdout"] if HANGING_STARTED in line]
    assert started[0].startswith(("py3.11 | ", "py3.12 | ")), cli.output()  # either may run
    group_id = announced(SUBMITTED, cli.stderr)
    group = group_of(server, group_id)
    assert sorted(job["status"] for job in group["jobs"]) == ["queued", "running"]

    cli.interrupt()  # Ctrl-C on the submit: the whole group goes
    assert cli.finish() == 130, cli.output()
    assert f"cancelling group {group_id} (its 2 jobs)" in cli.stderr
    group = group_of(server, group_id)
    assert (group["status"], [job["status"] for job in group["jobs"]]) == (
        "cancelled",
        ["cancelled", "cancelled"],
    )
    for job in group["jobs"]:
        assert_no_container_left(docker_client, job["job_id"])

    submitted = run_ci("submit", "test", "--async", "--shards", "2", cwd=hanging, server=server)
    group_id = announced(ASYNC_SUBMITTED, submitted.stdout.strip())
    cancelled = run_ci("cancel", group_id, cwd=hanging, server=server)
    assert cancelled.returncode == 0, describe(cancelled)
    assert cancelled.stderr.startswith(f"Group {group_id} cancelled"), describe(cancelled)
    assert [job["status"] for job in group_of(server, group_id)["jobs"]] == ["cancelled"] * 2
    again = run_ci("cancel", group_id, cwd=hanging, server=server)
    assert "had already finished (cancelled)" in again.stderr, describe(again)
