"""Fixtures shared by every test layer: the Docker engine, the runner image, PostgreSQL.

Without a Docker engine or a PostgreSQL server, the tests that need one are skipped on a
developer machine but FAIL when the CI environment variable is set: CI must never pass by
silently skipping them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import docker
import docker.errors
import pytest
import requests.exceptions

T = TypeVar("T")

POSTGRES_URL = "postgresql://postgres@127.0.0.1:55432/postgres"
"""The server scripts/ensure-postgres.sh starts; CI_TEST_DATABASE_URL names another."""


def _unavailable(why: str, what: str = "docker") -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: {what} tests must run)", pytrace=False)
    pytest.skip(why)


def _docker_unavailable(why: str) -> NoReturn:
    _unavailable(why, "docker")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the Docker engine (DOCKER_HOST or the default socket), checked with a ping."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        _docker_unavailable(f"Docker engine unreachable: {e}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def runner_image(docker_client: docker.DockerClient) -> str:
    """The image jobs run in (CI_RUNNER_IMAGE, default ci-runner:bookworm); it must exist."""
    image = os.environ.get("CI_RUNNER_IMAGE", "ci-runner:bookworm")
    try:
        docker_client.images.get(image)
    except docker.errors.ImageNotFound:
        _docker_unavailable(
            f"runner image {image!r} not found: build it with scripts/build-runner-image.sh"
        )
    return image


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` to its end from synchronous code, in a thread with its own event loop
    (so it never touches the loop pytest-asyncio runs the tests in)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, coroutine).result()


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def with_database(url: str, database: str) -> str:
    """`url` naming another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A URL of a PostgreSQL server on which we may create databases, checked with a query."""
    url = os.environ.get("CI_TEST_DATABASE_URL", POSTGRES_URL)
    try:
        run_async(_execute(url, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        _unavailable(
            f"PostgreSQL unreachable at {url}: {e} (start one with scripts/ensure-postgres.sh)",
            "PostgreSQL",
        )
    return url


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty database of its own for the test, dropped after it."""
    name = f"ci_test_{uuid.uuid4().hex[:12]}"
    run_async(_execute(postgres_server, f"CREATE DATABASE {name}"))
    yield with_database(postgres_server, name)
    run_async(_execute(postgres_server, f"DROP DATABASE {name} WITH (FORCE)"))
