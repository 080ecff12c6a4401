"""End to end: a slow suite split in shards, and a suite under two Python versions, through
the real `ci` against a real `ci-server` running real Docker (ci-runner:bookworm, Python
3.11, and ci-runner:trixie, 3.13: scripts/build-runner-image.sh builds both)."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, copy_fixture, run_ci

pytestmark = pytest.mark.docker

GROUP_ID = re.compile(r"\bg-[0-9a-f]{12}\b")
FORTY = [
    f"tests/test_{name}.py::test_{name}[{n}]"
    for name, count in (("alpha", 12), ("bravo", 10), ("charlie", 8), ("delta", 6), ("echo", 4))
    for n in range(count)
]


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"


@pytest.fixture
def server(
    make_server: ServerFactory, runner_image: str, docker_client: docker.DockerClient
) -> ServerProcess:
    """Four jobs at once (the shards sleep: two cores do not limit them), 3.11 and 3.13."""
    newer = f"{runner_image.rpartition(':')[0]}:trixie"
    try:
        docker_client.images.get(newer)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{newer} not found: build it with scripts/build-runner-image.sh")
    return make_server(
        CI_MAX_CONCURRENT_JOBS="4", CI_PYTHON_IMAGES=f"3.11={runner_image},3.13={newer}"
    )


def group_jobs(server: ServerProcess, output: str) -> list[dict[str, Any]]:
    match = GROUP_ID.search(output)
    assert match is not None, output
    response = server.get(f"/groups/{match.group(0)}")
    response.raise_for_status()
    return response.json()["jobs"]


def results_of(server: ServerProcess, job_id: str) -> list[dict[str, Any]]:
    response = server.get(f"/jobs/{job_id}/tests", params={"limit": 500})
    response.raise_for_status()
    return response.json()


def test_four_shards_run_each_of_the_40_tests_once(server: ServerProcess, tmp_path: Path) -> None:
    project = copy_fixture("sleepy_forty", tmp_path)
    result = run_ci("submit", "test", "--shards", "4", cwd=project, server=server, timeout=600)
    assert result.returncode == 0, describe(result)
    assert re.search(rf"^Group {GROUP_ID.pattern} succeeded: 40 passed\b", result.stderr, re.M), (
        describe(result)
    )

    jobs = group_jobs(server, result.stderr)
    assert sorted(job["shard_index"] for job in jobs) == [1, 2, 3, 4]
    ran = Counter(test["node_id"] for job in jobs for test in results_of(server, job["job_id"]))
    assert sorted(ran) == sorted(FORTY)
    assert set(ran.values()) == {1}
    for job in jobs:
        log = run_ci("logs", job["job_id"], cwd=project, server=server)
        assert f"Shard {job['shard_index']} of 4: " in log.stdout, describe(log)
        assert f"Shard {job['shard_index']} of 4 collected 40 tests" in log.stderr, describe(log)
    # Every shard collected the same 40 tests: nothing to warn of.
    assert len({job["summary"]["collected_sha256"] for job in jobs}) == 1
    assert "collected different tests" not in result.stderr, describe(result)


def test_one_failing_test_in_one_shard_fails_the_group_and_ci_show_names_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    project = copy_fixture("sleepy_forty", tmp_path)
    (project / "tests" / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    result = run_ci("submit", "test", "--shards", "4", cwd=project, server=server, timeout=600)
    assert result.returncode == 1, describe(result)

    jobs = group_jobs(server, result.stderr)
    assert sorted(job["status"] for job in jobs) == [
        "failed",
        "succeeded",
        "succeeded",
        "succeeded",
    ]
    match = GROUP_ID.search(result.stderr)
    assert match is not None
    shown = run_ci("show", match.group(0), cwd=project, server=server)
    assert "tests/test_fails.py::test_fails" in shown.stdout, describe(shown)


def test_two_python_versions_each_in_its_image_a_3_13_failure_fails_that_job_and_the_group(
    server: ServerProcess, tmp_path: Path
) -> None:
    project = copy_fixture("python_versions", tmp_path)
    result = run_ci("submit", "test", "--python", "3.11,3.13", cwd=project, server=server)
    assert result.returncode == 1, describe(result)
    assert re.search(r"==> Python 3\.11\.\d+", result.stdout), describe(result)
    assert re.search(r"==> Python 3\.13\.\d+", result.stdout), describe(result)

    jobs = {job["python"]: job for job in group_jobs(server, result.stderr)}
    assert jobs["3.11"]["status"] == "succeeded"
    assert jobs["3.13"]["status"] == "failed"
    failed = [
        t["node_id"] for t in results_of(server, jobs["3.13"]["job_id"]) if t["outcome"] == "failed"
    ]
    assert failed == ["tests/test_versions.py::test_not_on_3_13"]
    for version, job in jobs.items():
        log = run_ci("logs", job["job_id"], cwd=project, server=server)
        assert re.search(rf"==> Python {re.escape(version)}\.\d+", log.stdout), describe(log)


def test_shards_that_collect_different_tests_fail_the_group_and_say_so(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Every test passes in its shard, but the shards split different sets (their ids name
    each container's host): the group fails, and `ci submit`, `ci show` and `ci list` warn."""
    project = copy_fixture("varying_collection", tmp_path)
    result = run_ci("submit", "test", "--shards", "2", cwd=project, server=server, timeout=600)
    assert result.returncode == 1, describe(result)
    warning = (
        "the shards collected different tests (2 sets): some tests may have run twice or not at all"
    )
    assert re.search(
        rf"^Group {GROUP_ID.pattern} failed: \d+ passed \({re.escape(warning)}\)",
        result.stderr,
        re.M,
    ), describe(result)
    jobs = group_jobs(server, result.stderr)
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    said = {job["summary"]["collected_sha256"] for job in jobs}
    assert len(said) == 2 and all(job["summary"]["collected"] == 12 for job in jobs)

    match = GROUP_ID.search(result.stderr)
    assert match is not None
    shown = run_ci("show", match.group(0), cwd=project, server=server)
    assert warning in shown.stdout, describe(shown)
    listed = run_ci("list", cwd=project, server=server)
    row = next(line for line in listed.stdout.splitlines() if match.group(0) in line)
    assert "failed" in row and warning in row, describe(listed)


def test_a_shard_whose_tests_forge_what_it_collected_fails_the_group_and_nothing_else(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The tests can write /ci-output/collected.json: a forged one (2 MiB, not the plugin's
    shape) reads as a shard that did not say, which fails the group with a warning."""
    project = copy_fixture("varying_collection", tmp_path)
    (project / "tests" / "test_per_host.py").unlink()
    (project / "tests" / "test_forges.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.parametrize('n', range(4))\n"
        "def test_passes(n):\n    assert n >= 0\n\n\n"
        "def test_forges():\n"
        "    with open('/ci-output/collected.json', 'w') as f:\n"
        '        f.write(\'{"tests": "many", "pad": "\' + \'x\' * 2**21 + \'"}\')\n'
    )
    result = run_ci("submit", "test", "--shards", "2", cwd=project, server=server, timeout=600)
    assert result.returncode == 1, describe(result)
    assert re.search(
        r"failed: 5 passed \(shard [12]/2 did not say what it collected: some tests may have "
        r"run twice or not at all\)",
        result.stderr,
    ), describe(result)
    assert "what it collected is unknown (/ci-output/collected.json: it is more than" in (
        result.stderr
    ), describe(result)
    jobs = group_jobs(server, result.stderr)
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"]
    assert server.get("/health").status_code == 200
