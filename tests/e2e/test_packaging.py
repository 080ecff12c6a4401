"""Packaging for two audiences: a plain `pip install` of the package, as on a developer's
laptop, brings what `ci` needs and none of the server's dependencies, and that `ci` runs a
project's tests on a real server. The server's commands, installed too, say which extra
they need.

A fresh virtual environment (no PYTHONPATH, no site packages of ours): pip builds the
package from a copy of its sources and fetches its dependencies from the package index.
About 20 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, ServerProcess, cli_env

SOURCES = ("setup.py", "ci_client", "ci_common", "ci_server")
SERVER_MODULES = (
    "fastapi",
    "uvicorn",
    "multipart",
    "pydantic",
    "pydantic_settings",
    "sse_starlette",
    "aiosqlite",
    "asyncpg",
    "docker",
    "defusedxml",
    "poetry",
    "jinja2",
    "prometheus_client",
)
"""The server's dependencies, by the name they are imported as."""


def _run(
    command: list[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def client_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a virtual environment with a plain `pip install` of the package."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    for name in SOURCES:
        path = REPO_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    venv = root / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)])
    assert created.returncode == 0, created.stderr
    installed = _run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            str(source),
        ],
        env=_clean_env(),
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv / "bin"


def _clean_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without what would let the venv's Python import our checkout."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONPATH", None)
    return env


def test_a_plain_install_brings_none_of_the_server_s_dependencies(client_install: Path) -> None:
    found = _run(
        [
            str(client_install / "python"),
            "-c",
            "import importlib.util, sys\n"
            "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))",
            *SERVER_MODULES,
        ],
        env=_clean_env(),
    )
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == []
    version = _run([str(client_install / "ci"), "--version"], env=_clean_env())
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("ci ")


@pytest.mark.parametrize("program", ["ci-server", "ci-worker", "ci-admin"])
def test_the_server_s_commands_say_which_extra_they_need(
    client_install: Path, program: str
) -> None:
    result = _run([str(client_install / program), "--version"], env=_clean_env())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(
        f"{program}: error: the server's dependencies are not installed"
    )
    assert "pip install 'selfhosted-ci[server]'" in result.stderr


@pytest.mark.docker
def test_the_client_alone_runs_a_project_s_tests_on_a_real_server(
    client_install: Path, server: ServerProcess, tmp_path: Path
) -> None:
    project = shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "passing", tmp_path / "passing")
    env = _clean_env(cli_env(server))
    submitted = _run([str(client_install / "ci"), "submit", "test"], env=env, cwd=project)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "3 passed" in submitted.stdout
    listed = _run([str(client_install / "ci"), "list", "--json"], env=env, cwd=project)
    assert listed.returncode == 0, listed.stderr
    assert '"status": "succeeded"' in listed.stdout
