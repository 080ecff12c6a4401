"""Real server processes and the real `ci` command, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], T | None], *, timeout: float = 60.0, interval: float = 0.05, what: str
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerProcess:
    """A `ci-server` process on a free port with its own database and data folder."""

    db_path: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.log_path = self.db_path.with_suffix(f".{self.port}.{time.monotonic_ns()}.log")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ci_server", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"ci-server exited at start-up:\n{self.log()}")
            try:
                return requests.get(f"{self.url}/health", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(healthy, timeout=60, what="the server to answer /health")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to clean up, as in a crash."""
        self.stop(signal.SIGKILL)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=10, **kwargs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_for_status(self, job_id: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_for(reached, timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}")


def server_env(
    tmp_path: Path, runner_image: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CI_DB_PATH": str(tmp_path / "ci.db"),
            "CI_DATA_DIR": str(tmp_path / "data"),
            "CI_RUNNER_IMAGE": runner_image,
        }
    )
    env.update(extra or {})
    return env


def ci_command() -> list[str]:
    """The installed `ci` console script when there is one, else the same entry point."""
    script = shutil.which("ci")
    return (
        [script]
        if script
        else [sys.executable, "-c", "from ci_client.cli import main; raise SystemExit(main())"]
    )


def run_ci(
    *args: str,
    cwd: Path,
    server: str,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to its end and capture what a user would see."""
    full_env = dict(os.environ) | {"CI_SERVER_URL": server} | dict(env or {})
    return subprocess.run(
        [*ci_command(), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_ci(*args: str, cwd: Path, server: str) -> subprocess.Popen[str]:
    """Start the real CLI in the background (to interrupt it or read it line by line)."""
    env = dict(os.environ) | {"CI_SERVER_URL": server, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*ci_command(), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def copy_fixture(name: str, destination: Path) -> Path:
    target = destination / name
    shutil.copytree(FIXTURES / name, target)
    return target
