"""Fixtures for end-to-end tests: real servers on free ports, fixture projects, the real CLI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.harness import ServerProcess, copy_fixture, server_env

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture
def make_server(
    tmp_path: Path, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerFactory]:
    """Start servers with `make_server(CI_MAX_CONCURRENT_JOBS="1", ...)`; all stop at the end."""
    started: list[ServerProcess] = []

    def make(**settings: str) -> ServerProcess:
        env = server_env(tmp_path, runner_image, settings)
        server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> ServerProcess:
    return make_server()


@pytest.fixture
def project(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a project from tests/fixtures into the test's own folder."""

    def copy(name: str) -> Path:
        return copy_fixture(name, tmp_path / "projects")

    return copy
