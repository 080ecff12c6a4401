"""End to end: test dependencies read where maintainers put them, and the pytest plugins a
project's configuration needs, with a real server, the real `ci` and real Docker.

One small fixture project per shape (tests/fixtures): a Poetry project with a dev group, a
project with only requirements/test.txt, a project with only a tox.ini, a project whose
pytest.ini and tests need plugins it does not list. Each job must pass (the tests check the
versions installed) and its log must name the files used and those seen and not used. The
dependencies come from PyPI through the proxy: small and pinned. A file the job must not use
names a project that does not exist: using it would fail the install.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import test_environments
from tests.e2e.harness import ServerProcess, copy_fixture, run_ci
from tests.e2e.test_cli import describe, progress_line

pytestmark = pytest.mark.docker

JOB_TIMEOUT = 900.0
"""Generous: each job builds its environment with pip through a proxy on a loaded machine."""

environment_keys = test_environments.environment_keys
"""The environments the tests made, removed at the end."""


@dataclass(frozen=True, slots=True)
class Shape:
    fixture: str
    key_file: str
    """Made unique for each run: the environment is built, not reused from an earlier one."""
    lines: tuple[str, ...]
    """What the job's log must say (`[ci] ...` lines, whole)."""

    @property
    def id(self) -> str:
        return self.fixture


SHAPES = (
    Shape(
        "poetry_dev_group",
        "pyproject.toml",
        (
            "Project: pyproject.toml, poetry group 'dev'",
            "Dependencies from pyproject.toml [tool.poetry.dependencies]",
            "Test dependencies from pyproject.toml [tool.poetry.group.dev.dependencies]",
            "Not used: pyproject.toml [tool.poetry.group.docs.dependencies] (not a test group)",
        ),
    ),
    Shape(
        "requirements_folder",
        "requirements/test.txt",
        (
            "Project: requirements/test.txt",
            "Test dependencies from requirements/test.txt, with requirements/base.txt",
            "Not used: requirements/dev.txt (requirements/test.txt comes first)",
        ),
    ),
    Shape(
        "tox_only",
        "tox.ini",
        (
            "Project: tox.ini [testenv] deps",
            "Test dependencies from tox.ini [testenv] deps",
            "Not installed: coverage: this-project-does-not-exist-ci-fixture from tox.ini "
            "[testenv] deps (for tox's coverage environments only)",
        ),
    ),
    Shape(
        "plugins_needed",
        "requirements.txt",
        (
            "Project: requirements.txt",
            "Adding pytest plugin pytest-cov: --cov=calc in pytest.ini addopts",
            "Adding pytest plugin pytest-mock: the mocker fixture in tests/test_calc.py",
        ),
    ),
)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.id)
def test_the_job_installs_what_the_project_names_and_says_where_it_was_read(
    shape: Shape, server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    project = copy_fixture(shape.fixture, tmp_path)
    key_file = project / shape.key_file
    key_file.write_text(f"{key_file.read_text()}# {uuid.uuid4().hex}\n")

    result = run_ci("submit", "test", cwd=project, server=server, timeout=JOB_TIMEOUT)

    built = test_environments.ENVIRONMENT.search(result.stderr)
    if built:
        environment_keys.add(built.group(1))
    assert result.returncode == 0, describe(result)
    assert built and built.group(2) == "built", describe(result)
    said = {line.removeprefix("[ci] ") for line in result.stderr.splitlines()}
    for line in shape.lines:
        assert line in said, f"no `[ci] {line}` line:\n{describe(result)}"


def test_the_plugins_added_do_their_work(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    """pytest-cov reports the coverage --cov asked for; pytest-mock's mocker patches."""
    project = copy_fixture("plugins_needed", tmp_path)

    result = run_ci("submit", "test", cwd=project, server=server, timeout=JOB_TIMEOUT)

    built = test_environments.ENVIRONMENT.search(result.stderr)
    if built:
        environment_keys.add(built.group(1))
    assert result.returncode == 0, describe(result)
    coverage = [line.split() for line in result.stdout.splitlines()]
    assert any(words[:1] == ["calc.py"] and words[-1] == "100%" for words in coverage), describe(
        result
    )
    assert progress_line("tests/test_calc.py", ".").search(result.stdout), describe(result)
