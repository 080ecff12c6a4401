"""Versions: every command says its own, a server says its own on every answer, and `ci`
refuses a server of another major API version with a clear message (exit status 2)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from ci_common.version import API_VERSION, package_version
from tests.e2e.harness import (
    ServerProcess,
    admin_command,
    ci_command,
    run_ci,
    worker_command,
)


@pytest.mark.parametrize(
    ("program", "command"),
    [
        ("ci", ci_command()),
        ("ci-server", [sys.executable, "-m", "ci_server"]),
        ("ci-worker", worker_command()),
        ("ci-admin", admin_command()),
    ],
)
def test_every_command_prints_the_package_version(program: str, command: list[str]) -> None:
    result = subprocess.run(
        [*command, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{program} {package_version()} (API {API_VERSION})"


class _ServerOfAnotherApi(BaseHTTPRequestHandler):
    """Answers every GET as a CI server of API 2.0 listing no jobs would."""

    def do_GET(self) -> None:
        body = json.dumps([]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-CI-Version", "2.3.0")
        self.send_header("X-CI-API-Version", "2.0")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server_of_another_api() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ServerOfAnotherApi)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_ci_refuses_a_server_of_another_major_api_version(
    server_of_another_api: str, tmp_path: Path
) -> None:
    result = run_ci("list", cwd=tmp_path, server=server_of_another_api)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"ci: error: the CI server at {server_of_another_api} speaks API 2.0 (ci-server 2.3.0), "
        f"and this ci {package_version()} speaks API {API_VERSION}: install the ci of the "
        "server's version, 2.3.0"
    )


def test_a_server_says_its_versions_on_every_answer(server: ServerProcess, tmp_path: Path) -> None:
    unauthenticated = requests.get(f"{server.url}/jobs", timeout=10)
    assert unauthenticated.status_code == 401
    for response in (server.get("/health"), server.get("/jobs"), unauthenticated):
        assert response.headers["X-CI-Version"] == package_version()
        assert response.headers["X-CI-API-Version"] == API_VERSION
    health = server.get("/health").json()
    assert (health["version"], health["api_version"]) == (package_version(), API_VERSION)
    assert run_ci("list", cwd=tmp_path, server=server).returncode == 0
