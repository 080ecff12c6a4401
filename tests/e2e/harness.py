"""Real server and worker processes and the real `ci` command, for end-to-end tests.

Each server gets an admin user and API key, made by the real `ci-admin` on its database
before it starts; `run_ci(..., server=<ServerProcess>)` sends that key, as CI_API_KEY.
`run_ci(..., server=<url>)` sends none. The CLI never reads the developer's config file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import TypeAdapter

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
NO_CONFIG_HOME = REPO_ROOT / "tests" / "e2e" / ".no-config-home"
"""XDG_CONFIG_HOME of every CLI run: a folder that does not exist, so no config file."""
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
    host: str = "127.0.0.1"
    api_key: str | None = None
    """An admin's key; made at start unless given (or CI_AUTH=off)."""
    args: tuple[str, ...] = ()
    """More arguments of `ci-server`, e.g. ("--no-worker",)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> bool:
        return TypeAdapter(bool).validate_python(self.env.get("CI_AUTH", "on"))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the real `ci-admin` on this server's database."""
        return subprocess.run(
            [*admin_command(), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def add_user(self, name: str, *, admin: bool = False) -> str:
        """A new user (email <name>-<random>@e2e.test) with one key; the key."""
        email = f"{name}-{uuid.uuid4().hex[:8]}@e2e.test"
        role = ["--admin"] if admin else []
        for args in (
            ("user", "create", "--name", name, "--email", email, *role),
            ("key", "create", "--email", email, "--name", f"{name}'s key"),
        ):
            result = self.admin(*args)
            assert result.returncode == 0, f"ci-admin {args}:\n{result.stderr}"
        return result.stdout.strip()

    def start(self) -> ServerProcess:
        if self.api_key is None and self.auth:
            self.api_key = self.add_user("admin", admin=True)
        self.log_path = self.db_path.with_suffix(f".{self.port}.{time.monotonic_ns()}.log")
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                *[sys.executable, "-m", "ci_server"],
                *["--host", self.host, "--port", str(self.port), *self.args],
            ],
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
        """GET with this server's admin key (and any other `headers` given)."""
        kwargs["headers"] = self.headers | kwargs.get("headers", {})
        kwargs.setdefault("timeout", 10)
        return requests.get(f"{self.url}{path}", **kwargs)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/jobs/{job_id}")
        response.raise_for_status()
        return response.json()

    def wait_for_status(self, job_id: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            return job if job["status"] in statuses else None

        return wait_for(reached, timeout=timeout, what=f"job {job_id} to be {'/'.join(statuses)}")


@dataclass
class WorkerProcess:
    """A `ci-worker --name NAME` process on the database and data folder of `env`."""

    name: str
    env: dict[str, str]
    log_dir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    args: tuple[str, ...] = ()
    """More arguments of `ci-worker`, e.g. ("--metrics-port", "9100")."""

    def start(self) -> WorkerProcess:
        self.log_path = self.log_dir / f"worker-{self.name}.{time.monotonic_ns()}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*worker_command(), "--name", self.name, *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"ci-worker exited at start-up:\n{self.log()}")
            return f"worker {self.name}: running up to" in self.log()

        wait_for(ready, timeout=60, what=f"worker {self.name} to start")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        """Send `sig` and wait for the exit; its exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: as a crash, or a host gone: no heartbeat, no clean-up."""
        self.stop(signal.SIGKILL)


def server_env(
    tmp_path: Path, runner_image: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CI_DB_PATH": str(tmp_path / "ci.db"),
            "CI_DATA_DIR": str(tmp_path / "data"),
            "CI_RUNNER_IMAGE": runner_image,
            # A stopped server's worker ends the jobs still running soon (default 30 s).
            "CI_WORKER_GRACE": "2",
        }
    )
    env.update(extra or {})
    return env


def _console_script(name: str, module: str) -> list[str]:
    """The installed console script when there is one, else the same entry point."""
    script = shutil.which(name)
    run_main = f"from {module} import main; raise SystemExit(main())"
    return [script] if script else [sys.executable, "-c", run_main]


def ci_command() -> list[str]:
    return _console_script("ci", "ci_client.cli")


def admin_command() -> list[str]:
    return _console_script("ci-admin", "ci_server.admin")


def worker_command() -> list[str]:
    return _console_script("ci-worker", "ci_server.worker.__main__")


def cli_env(server: ServerProcess | str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The CLI's environment: the server's URL and key, and no key or config of our own."""
    env = {name: value for name, value in os.environ.items() if name != "CI_API_KEY"}
    env["XDG_CONFIG_HOME"] = str(NO_CONFIG_HOME)
    if isinstance(server, ServerProcess):
        env["CI_SERVER_URL"] = server.url
        if server.api_key:
            env["CI_API_KEY"] = server.api_key
    else:
        env["CI_SERVER_URL"] = server
    return env | dict(extra or {})


def run_ci(
    *args: str,
    cwd: Path,
    server: ServerProcess | str,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI to its end and capture what a user would see."""
    return subprocess.run(
        [*ci_command(), *args],
        cwd=cwd,
        env=cli_env(server, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_ci(
    *args: str, cwd: Path, server: ServerProcess | str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the real CLI in the background (to interrupt it or read it line by line)."""
    return subprocess.Popen(
        [*ci_command(), *args],
        cwd=cwd,
        env=cli_env(server, {"PYTHONUNBUFFERED": "1", **(env or {})}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def copy_fixture(name: str, destination: Path) -> Path:
    target = destination / name
    shutil.copytree(FIXTURES / name, target)
    return target
