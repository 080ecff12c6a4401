"""End to end: real published projects, as their sdists come from PyPI, through `ci submit test`.

None of them has a requirements.txt: the server must find out from pyproject.toml, setup.cfg
or setup.py how to install each one with its test dependencies. Each suite runs twice in the
same runner image: as a job of a real server driven by the real `ci`, and directly
(`pip install` + `pytest` as root in a plain container). The job must succeed with the counts
of passed and skipped tests that the direct run's pytest prints.

The sdists are pinned and downloaded once with pip into SDIST_CACHE, which is kept between
runs (set CI_E2E_SDIST_CACHE to move it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.e2e.harness import ServerProcess, run_ci
from tests.e2e.test_cli import ProjectFactory, describe, job_id_from_submit

pytestmark = pytest.mark.docker

SDIST_CACHE = Path(
    os.environ.get("CI_E2E_SDIST_CACHE", Path.home() / ".cache" / "ci-e2e-sdists")
).expanduser()
JOB_TIMEOUT = 900.0
"""Generous: a first job builds its environment with pip through a proxy on a loaded machine."""
DIRECT_TIMEOUT = 900.0
PROJECT_LINE = re.compile(r"^\[ci\] Project: (.*)$", re.MULTILINE)
PYTEST_SUMMARY = re.compile(
    r"^=*\s*(?P<counts>\d+ [a-z][a-z ]*(?:, \d+ [a-z][a-z ]*)*) in [\d.]+s\b"
)
"""pytest's last line, `86 passed, 14 skipped, 3 subtests passed in 0.42s` (in `=` unless -q)."""


@dataclass(frozen=True, slots=True)
class RealProject:
    name: str
    version: str
    chosen: str
    """What the job's `[ci] Project: ...` line must say about the install it chose."""
    direct_install: str
    """pip's arguments in the direct run: the project and its test dependencies, by hand."""

    @property
    def id(self) -> str:
        return f"{self.name}-{self.version}"


PROJECTS = (
    # flit_scm backend (dynamic version), static `[project.optional-dependencies] test`.
    RealProject("exceptiongroup", "1.2.2", "pyproject.toml, extra [test]", "'.[test]'"),
    # setuptools + setuptools-scm, src layout, setup.cfg `[options.extras_require] testing`;
    # pytest itself runs on pluggy: the project under test replaces a dependency of pytest.
    RealProject("pluggy", "1.5.0", "setup.cfg, extra [testing]", "'.[testing]'"),
    # setuptools-scm, src layout, a PEP 735 `[dependency-groups] dev` (pip 23 cannot read it).
    RealProject(
        "iniconfig",
        "2.3.1",
        "pyproject.toml, dependency group 'dev'",
        ". 'pytest>=8.4.2' 'pytest-xdist>=3.8'",
    ),
    # setup.py only (it imports the module it packages), no test extra.
    SIX := RealProject("six", "1.17.0", "setup.py, no test extra or group", "."),
)
SIX_SELECTION = "moves"
"""A `-k` expression selecting some of six's tests only."""


# -- sources -------------------------------------------------------------------------------


def download_sdist(project: RealProject) -> Path:
    """The project's sdist from SDIST_CACHE, downloaded with pip the first time."""
    target = SDIST_CACHE / project.id
    cached = sorted(target.glob("*.tar.gz"))
    if cached:
        return cached[0]
    SDIST_CACHE.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{project.id}-", dir=SDIST_CACHE))
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"{project.name}=={project.version}",
                "--dest",
                str(partial),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, f"pip download {project.id} failed:\n{result.stderr}"
        partial.rename(target)  # whole or not at all: a broken download is never reused
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    (sdist,) = target.glob("*.tar.gz")
    return sdist


def unpack_sdist(sdist: Path, destination: Path) -> Path:
    """The sdist's top folder, unpacked under `destination`."""
    with tarfile.open(sdist) as archive:
        archive.extractall(destination, filter="data")
    (root,) = (path for path in destination.iterdir() if path.is_dir())
    assert not (root / "requirements.txt").exists(), f"{sdist.name} has a requirements.txt"
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Callable[[RealProject], Path]:
    """`sources(project)`: the unpacked sdist, shared by the module's tests (read only)."""
    unpacked: dict[str, Path] = {}

    def source(project: RealProject) -> Path:
        if project.id not in unpacked:
            folder = tmp_path_factory.mktemp(project.id)
            unpacked[project.id] = unpack_sdist(download_sdist(project), folder)
        return unpacked[project.id]

    return source


# -- the two ways to run a suite ------------------------------------------------------------


def pytest_counts(output: str) -> dict[str, int]:
    """{"passed": 86, "skipped": 14, "subtests passed": 3} from pytest's summary line."""
    for line in reversed(output.splitlines()):
        match = PYTEST_SUMMARY.match(line.strip())
        if match:
            items = (item.split(" ", 1) for item in match["counts"].split(", "))
            return {word: int(count) for count, word in items}
    raise AssertionError(f"no pytest summary line in:\n{output}")


def run_directly(
    docker_client: docker.DockerClient,
    image: str,
    source: Path,
    install: str,
    pytest_args: Sequence[str] = (),
) -> dict[str, int]:
    """pip install + pytest as root in a plain container of `image`; pytest's counts."""
    script = (
        "cp -R /src/. /tmp/p && cd /tmp/p"
        f" && python -m pip install --quiet --progress-bar off {install}"
        f" && python -m pytest -q -p no:cacheprovider {' '.join(pytest_args)}"
    )
    container = docker_client.containers.run(
        image,
        ["sh", "-c", script],
        volumes={str(source): {"bind": "/src", "mode": "ro"}},
        user="0:0",
        detach=True,
    )
    try:
        status = container.wait(timeout=DIRECT_TIMEOUT)["StatusCode"]
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert status == 0, f"the direct run exited with {status}:\n{output}"
    return pytest_counts(output)


@dataclass(frozen=True, slots=True)
class JobRun:
    job: dict[str, Any]
    """As `ci list --json` shows it."""
    project_line: str
    """What the server said it installs (`[ci] Project: <this>`)."""


def run_as_job(source: Path, server: ServerProcess, pytest_args: Sequence[str] = ()) -> JobRun:
    """`ci submit test [-- args]` in `source`: it must succeed."""
    extra = ("--", *pytest_args) if pytest_args else ()
    result = run_ci("submit", "test", *extra, cwd=source, server=server, timeout=JOB_TIMEOUT)
    assert result.returncode == 0, describe(result)
    job_id = job_id_from_submit(result.stderr)
    project_line = PROJECT_LINE.search(result.stderr)
    assert project_line, describe(result)
    listed = run_ci("list", "--json", cwd=source, server=server, timeout=60)
    assert listed.returncode == 0, describe(listed)
    (job,) = (job for job in json.loads(listed.stdout) if job["job_id"] == job_id)
    assert job["status"] == "succeeded", job
    return JobRun(job, project_line.group(1))


def assert_same_counts(job: dict[str, Any], direct: dict[str, int]) -> None:
    """The job's summary says what pytest said in the direct run."""
    summary = job["summary"]
    assert summary is not None, job
    expected = {
        outcome: direct.get(outcome, 0) for outcome in ("passed", "skipped", "xfailed", "xpassed")
    } | {"failed": 0, "errors": 0}
    assert {key: summary[key] for key in expected} == expected, (job, direct)
    assert summary["total"] == sum(expected.values()), job


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("real", PROJECTS, ids=lambda project: project.id)
def test_a_published_project_runs_green_with_the_counts_of_a_direct_run(
    real: RealProject,
    sources: Callable[[RealProject], Path],
    server: ServerProcess,
    docker_client: docker.DockerClient,
    runner_image: str,
) -> None:
    source = sources(real)

    run = run_as_job(source, server)
    direct = run_directly(docker_client, runner_image, source, real.direct_install)

    assert real.chosen in run.project_line, run.project_line
    assert direct.get("passed", 0) > 0, direct
    assert_same_counts(run.job, direct)


def test_pytest_arguments_after_double_dash_select_tests_as_in_a_direct_run(
    sources: Callable[[RealProject], Path],
    server: ServerProcess,
    docker_client: docker.DockerClient,
    runner_image: str,
) -> None:
    source = sources(SIX)
    selection = ("-k", SIX_SELECTION)

    run = run_as_job(source, server, selection)
    direct = run_directly(docker_client, runner_image, source, SIX.direct_install, selection)

    assert direct.get("deselected", 0) > 0, direct  # the expression did leave tests out
    assert direct.get("passed", 0) > 0, direct
    assert run.job["pytest_args"] == list(selection), run.job
    assert_same_counts(run.job, direct)


def test_show_lists_the_failing_test_with_its_message(
    server: ServerProcess, project: ProjectFactory
) -> None:
    failing = project("failing")
    submitted = run_ci("submit", "test", cwd=failing, server=server, timeout=JOB_TIMEOUT)
    assert submitted.returncode == 1, describe(submitted)
    job_id = job_id_from_submit(submitted.stderr)

    shown = run_ci("show", job_id, cwd=failing, server=server, timeout=60)

    assert shown.returncode == 0, describe(shown)
    lines = [line.strip() for line in shown.stdout.splitlines()]
    assert lines[0].startswith(f"Job {job_id} failed: 2 passed, 1 failed"), describe(shown)
    assert "tests     2 passed, 1 failed, 0 errors, 0 skipped, 0 xfailed, 0 xpassed" in (
        shown.stdout
    ), describe(shown)
    failures = lines[lines.index("Failures:") + 1 :]
    assert failures[0] == "FAILED tests/test_calc.py::test_subtract", describe(shown)
    assert any("subtract(5, 3) should be 2 but was -2" in line for line in failures[1:]), describe(
        shown
    )
    assert not any("test_add" in line or "test_multiply" in line for line in failures), describe(
        shown
    )
