"""Fixtures shared by every test layer: access to the Docker engine and the runner image.

Without a Docker engine, docker tests are skipped on a developer machine but FAIL when the
CI environment variable is set: CI must never pass by silently skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NoReturn

import docker
import docker.errors
import pytest
import requests.exceptions


def _docker_unavailable(why: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: docker tests must run)", pytrace=False)
    pytest.skip(why)


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
