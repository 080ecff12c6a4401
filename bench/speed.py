"""Speed benchmark: what `ci submit test` costs over running pytest in Docker by hand.

    python bench/speed.py [--runs 10] [--jobs 100000] [--parts 12345] [--keep]

Real `ci-server` processes (free ports, temporary databases), the real `ci` command and the
real Docker engine, in five parts:

1. Warm overhead: a two-test project, after one warm-up submit. Alternating, --runs times
   each: the wall time of `ci submit test` (a subprocess), of `docker run --rm` of pytest in
   the same environment image (source mounted read-only and copied to /tmp as the job script
   does, user 1000:1000, no network) and, for reference, of `docker run --rm <image> true`.
   Median, p90, the ratio of medians (goal: <= 1.3) and where the time goes, phase by
   phase: from the client's clock, the engine's container events (start, or rename for a
   container started ahead and handed the job; die) and, for a job, the times the server
   stamps on its events (all one host clock). The server runs with its defaults, so with
   warm containers (CI_WARM_CONTAINERS): the warm-up submit leaves one ready for the first
   measured run, and each run leaves one for the next.
2. Cold run: a project needing downloads (pytest, attrs, six, iniconfig) on a fresh server
   that has no environment for it, against "the old way" (`docker run --rm` of the runner
   image doing `pip install -r requirements.txt && pytest` as root with the network; once
   before and once after), then a second, warm submit of the same project.
3. Stream latency (part 1's server and environment): a test prints `T <time.time()>` every
   10 ms, 300 lines (pytest -s); an SSE client records when each line arrives.
   Latency = arrival - printed time (one host clock).
4. Listing at scale: --jobs finished jobs written straight into a fresh SQLite database (the
   store's own schema and row format, one transaction), a server started on it, then the
   median of 5 of `GET /jobs?limit=50`, the same `before=` a job deep in the list, and
   `ci list --json --limit 50`; the server's RSS after.

Every requirements.txt carries a comment unique to this run, so its environment images are
new (nobody else's are reused, and the servers keep up to 1000 so none are evicted); the
benchmark removes them at the end, with every server and container it started. The exit
status is 0 when every part ran, 2 when one could not (no Docker, no image, a job failed...).
5. A packaged project (tests/fixtures/packaged: pyproject.toml, src layout, setuptools),
   warm, --runs times each, alternating: `ci submit test` (its environment has the project
   installed, editable) against `docker run --rm` of pytest alone in the same image, and
   of installing the project first (`pip install -e .`), as every run did before.

`--parts 13` runs only some parts; `--keep` keeps the folder with the servers' logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from ci_client.archive import build_archive  # noqa: E402
from ci_client.client import CIClient, ClientError, Event  # noqa: E402
from ci_server.models import Job, JobStatus, TestSummary, new_job_id, utcnow  # noqa: E402
from ci_server.runner.docker import container_name  # noqa: E402
from ci_server.runner.executor import ENVIRONMENT_LABEL, INSTANCE_LABEL  # noqa: E402
from ci_server.runner.scripts import INSTALLED_PROJECT  # noqa: E402
from ci_server.settings import Settings  # noqa: E402
from ci_server.store.columns import JOB_COLUMNS  # noqa: E402
from ci_server.store.sqlite import SqliteStore, job_row  # noqa: E402
from tests.e2e.harness import ServerProcess, ci_command, run_ci, server_env, wait_for  # noqa: E402

DEFAULT_IMAGE = "ci-runner:bookworm"
SUBMIT_TIMEOUT = 300.0
"""Deadline of one `ci submit test` (a cold build included)."""
DOCKER_TIMEOUT = 300.0
"""Deadline of one `docker run` (the old way's pip install included)."""
LISTING_REPEATS = 5
STREAM_LINES = 300
STREAM_INTERVAL = 0.01
JOB_ID_RE = re.compile(r"Job ([0-9a-f]{12}) submitted")
RUNNING_IN_RE = re.compile(r"^\[ci\] Running in (\S+)$", re.MULTILINE)
ENVIRONMENT_RE = re.compile(r"^\[ci\] Environment ([0-9a-f]{12}) (reused|built)", re.MULTILINE)
BUILT_IN_RE = re.compile(r"Environment [0-9a-f]{12} built in ([\d.]+)s")
STREAM_LINE_RE = re.compile(r"\bT (\d+\.\d+)")
COPY_AND_TEST = (
    "cp -R /src/. /tmp/project && cd /tmp/project && python -m pytest -v -p no:cacheprovider"
)
INSTALLED_AND_TEST = (
    f"mkdir -p /tmp/project && cp -R {INSTALLED_PROJECT}/generated/. /tmp/project && "
    + COPY_AND_TEST
)
"""pytest alone in an environment holding the project: what its build wrote, then its source."""
INSTALL_AND_TEST = (
    "cp -R /src/. /tmp/project && cd /tmp/project && "
    "python -m pip install --progress-bar off --quiet --no-deps --no-build-isolation -e . && "
    "python -m pytest -v -p no:cacheprovider"
)
OLD_WAY = (
    "cp -R /src/. /tmp/project && cd /tmp/project && "
    "python -m pip install --progress-bar off -r requirements.txt && "
    "python -m pytest -v -p no:cacheprovider"
)
TWO_TESTS = """\
def test_one() -> None:
    assert 1 + 1 == 2


def test_two() -> None:
    assert "ci".upper() == "CI"
"""
COLD_TESTS = """\
import attrs
import six


def test_attrs() -> None:
    @attrs.define
    class Point:
        x: int
        y: int

    assert Point(1, 2) == Point(1, 2)


def test_six() -> None:
    assert six.PY3
"""
STREAM_TEST = f"""\
import time


def test_stream() -> None:
    print()  # pytest -v has printed the test's id without a newline
    for _ in range({STREAM_LINES}):
        print(f"T {{time.time():.6f}}", flush=True)
        time.sleep({STREAM_INTERVAL})
"""


class BenchError(Exception):
    """The benchmark could not run: no Docker, no image, a job that did not pass..."""


# -- small helpers ----------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p90 of 10 values is the 9th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def seconds(value: float) -> str:
    return f"{value:.2f} s"


def millis(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def spread(values: Sequence[float]) -> str:
    return f"median {seconds(statistics.median(values))}, p90 {seconds(percentile(values, 0.9))}"


def timestamp(value: str) -> float:
    """An ISO 8601 time from the server as seconds since the epoch."""
    return datetime.fromisoformat(value).timestamp()


def resident_mib(pid: int) -> float | None:
    """VmRSS of a process in MiB, None once it is gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == "VmRSS":
                return int(value.split()[0]) / 1024
    return None


def load_average() -> str:
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


@dataclass
class Table:
    rows: list[tuple[str, str]] = field(default_factory=list)

    def section(self, title: str) -> None:
        self.rows.append((f"-- {title}", ""))

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))

    def print(self) -> None:
        width = max(len(name) for name, _ in self.rows if not name.startswith("-- "))
        for name, value in self.rows:
            if name.startswith("-- "):
                print(f"\n{name}")
            else:
                print(f"  {name:<{width}}  {value}")


def write_project(root: Path, requirements: str, files: dict[str, str]) -> Path:
    """A project folder readable by the container's user 1000 (it is bind-mounted as is)."""
    root.mkdir(parents=True)
    root.chmod(0o755)
    (root / "requirements.txt").write_text(requirements)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# -- Docker ------------------------------------------------------------------------------------


def connect_docker(image: str) -> docker.DockerClient:
    """A client to the engine, after checking it answers and has the runner image."""
    if shutil.which("docker") is None:
        raise BenchError("the `docker` command is not installed (the baselines run it)")
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise BenchError(f"the Docker engine does not answer: {e}") from e
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound as e:
        client.close()
        raise BenchError(
            f"runner image {image!r} not found: build it with scripts/build-runner-image.sh "
            "or pass --image / CI_RUNNER_IMAGE"
        ) from e
    return client


@dataclass(frozen=True)
class DockerRun:
    name: str
    wall: float
    started_at: float
    """time.time() just before `docker run` started."""
    ended_at: float
    stdout: str


def docker_run(arguments: Sequence[str], *, timeout: float = DOCKER_TIMEOUT) -> DockerRun:
    """Run `docker run --rm ...` to its end; the container goes whatever happens."""
    name = f"ci-bench-{uuid.uuid4().hex[:12]}"
    command = ["docker", "run", "--rm", "--name", name, *arguments]
    started_at, started = time.time(), time.monotonic()
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    except BaseException as e:
        # The killed `docker` client leaves its container running: remove it by name.
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60, check=False)
        if isinstance(e, subprocess.TimeoutExpired):
            raise BenchError(f"`docker run` did not end within {timeout:g}s") from e
        raise
    wall, ended_at = time.monotonic() - started, time.time()
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise BenchError(f"`{' '.join(command[:8])} ...` exited {result.returncode}:\n{output}")
    return DockerRun(name, wall, started_at, ended_at, result.stdout)


def container_events(client: docker.DockerClient, since: float, **filters: str) -> dict[str, float]:
    """When the engine created, started, stopped... one container: action -> time.time().

    Read back from the engine's short event history at once, before it rolls over.
    """
    times: dict[str, float] = {}
    events = client.events(
        since=since, until=time.time(), filters={"type": "container", **filters}, decode=True
    )
    for event in events:
        times.setdefault(str(event["Action"]), int(event["timeNano"]) / 1e9)
    return times


def environment_image(client: docker.DockerClient, stderr: str) -> str:
    """The image a job ran in: its "Running in" line, else its environment key's label."""
    match = RUNNING_IN_RE.search(stderr)
    if match is not None:
        return match.group(1)
    key = ENVIRONMENT_RE.search(stderr)
    if key is not None:
        for image in client.images.list(filters={"label": ENVIRONMENT_LABEL}):
            if image.labels.get(ENVIRONMENT_LABEL, "").startswith(key.group(1)) and image.tags:
                return image.tags[0]
    raise BenchError(f"no environment image named in the job's log:\n{stderr[-2000:]}")


# -- servers and submits -----------------------------------------------------------------------


@dataclass
class Bench:
    workdir: Path
    image: str
    docker: docker.DockerClient
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    servers: list[ServerProcess] = field(default_factory=list)
    environments: set[str] = field(default_factory=set)
    """Environment images this run made (their keys are unique to it): removed at the end."""

    def start_server(self, name: str) -> ServerProcess:
        folder = self.workdir / f"server-{name}"
        folder.mkdir()
        extra = {"CI_ENV_CACHE_SIZE": "1000", "CI_MAX_CONCURRENT_JOBS": "1"}
        env = server_env(folder, self.image, extra)
        server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env)
        self.servers.append(server)
        try:
            return server.start()
        except AssertionError as e:
            raise BenchError(f"the server did not start: {e}") from e

    def requirements(self, *names: str) -> str:
        return f"# ci bench run {self.tag}\n" + "".join(f"{name}\n" for name in names)

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        for tag in sorted(self.environments):
            try:
                self.docker.images.remove(tag)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as e:
                print(f"speed: could not remove image {tag}: {e}", file=sys.stderr)
        self.docker.close()


@dataclass(frozen=True)
class Submit:
    job_id: str
    wall: float
    started_at: float
    """time.time() just before the subprocess started."""
    ended_at: float
    stderr: str
    stdout: str


def submit(
    project: Path, server: ServerProcess, *args: str, timeout: float = SUBMIT_TIMEOUT
) -> Submit:
    """Run the real `ci submit test` in `project`; it must pass."""
    started_at, started = time.time(), time.monotonic()
    try:
        result = run_ci("submit", "test", *args, cwd=project, server=server, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`ci submit test` did not end within {timeout:g}s") from e
    wall, ended_at = time.monotonic() - started, time.time()
    match = JOB_ID_RE.search(result.stderr)
    if result.returncode != 0 or match is None:
        raise BenchError(
            f"`ci submit test` in {project.name} exited {result.returncode}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}\nserver log: {server.log_path}"
        )
    return Submit(match.group(1), wall, started_at, ended_at, result.stderr, result.stdout)


def job_events(server: ServerProcess, job_id: str) -> list[Event]:
    """A finished job's events, replayed by the server (ends with the `end` event)."""
    return list(CIClient(server.url, api_key=server.api_key).events(job_id, after=0))


# -- 1. warm overhead --------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeline:
    """One run's marks, in time.time() seconds: the client's, the engine's, the server's."""

    client_start: float
    ready: float
    """The container started (made for the run) or was handed the job (warm)."""
    died: float
    client_end: float
    warm: bool = False
    server: list[float] = field(default_factory=list)
    """A job's marks between the client's start and its end, as CI_PHASES split them."""


SHARED_PHASES = (
    "client start -> container runs the script",
    "-> died (sh, cp, pytest, exit)",
    "died -> client exits",
)
CI_PHASES = (
    "CLI start, zip, upload (-> job created)",
    "queue (-> job running)",
    "unpack, environment lookup (-> 'Running in')",
    "warm container handed the job (-> renamed)",
    "sh, cp, echo (-> 1st output line)",
    "python + pytest start-up (-> 'test session starts')",
    "collect + run 2 tests + report (-> last line)",
    "pytest exits, container stops (-> died)",
    "wait, JUnit, store (-> end event)",
    "end event -> `ci` exits",
)


def engine_mark(container: dict[str, float], action: str, what: str) -> float:
    try:
        return container[action]
    except KeyError as e:
        raise BenchError(f"{what}: the engine reported no {e} event ({container})") from e


def docker_timeline(client: docker.DockerClient, run: DockerRun) -> Timeline:
    container = container_events(client, run.started_at - 1, container=run.name)
    started = engine_mark(container, "start", f"container {run.name}")
    died = engine_mark(container, "die", f"container {run.name}")
    return Timeline(run.started_at, started, died, run.ended_at)


def job_timeline(client: docker.DockerClient, server: ServerProcess, run: Submit) -> Timeline:
    """A warm job's marks, from the engine's events and the times the server gave its own.

    A container started ahead for the job took its name when it was handed the job
    (the engine's "rename" event); one made for the job has it from its creation.
    """
    name = container_name(run.job_id)
    container = container_events(client, run.started_at - 1, container=name)
    warm = "rename" in container
    ready = engine_mark(container, "rename" if warm else "start", f"job {run.job_id}")
    died = engine_mark(container, "die", f"job {run.job_id}")
    job = server.job(run.job_id)
    events = job_events(server, run.job_id)

    def first(condition: Callable[[Event], bool], what: str) -> float:
        for event in events:
            if condition(event):
                return timestamp(event.data["time"])
        raise BenchError(f"job {run.job_id}: no event for {what}")

    def is_log(stream: str, text: str = "") -> Callable[[Event], bool]:
        return lambda e: (
            e.type == "log" and e.data.get("stream") == stream and text in e.data.get("text", "")
        )

    running_in = first(is_log("system", "Running in "), "'Running in'")
    first_output = first(
        lambda e: is_log("stdout")(e) and timestamp(e.data["time"]) >= running_in,
        "the first output line",
    )
    session = first(is_log("stdout", "test session starts"), "pytest's session start")
    last_line = [timestamp(e.data["time"]) for e in events if is_log("stdout")(e)][-1]
    end = first(lambda e: e.type == "end", "the end")
    server_marks = [
        timestamp(job["created_at"]),
        timestamp(job["start_time"]),
        running_in,
        ready,
        first_output,
        session,
        last_line,
        died,
        end,
    ]
    return Timeline(run.started_at, ready, died, run.ended_at, warm, server_marks)


def phase_medians(marks: Sequence[Sequence[float]]) -> list[float]:
    """The median of each phase (the time between two marks) over the runs."""
    phases = [[b - a for a, b in itertools.pairwise(run)] for run in marks]
    return [statistics.median(times) for times in zip(*phases, strict=True)]


def command_start_up(command: Sequence[str], repeats: int) -> float:
    """Median wall time of a short command (start-up cost)."""
    times: list[float] = []
    for _ in range(repeats):
        started = time.monotonic()
        subprocess.run(command, capture_output=True, timeout=60, check=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def settle(client: docker.DockerClient, server: ServerProcess, job_id: str) -> None:
    """Wait until the server's work after a job is done: the job's container removed and the
    next one started ahead, so that work never overlaps the next measured run."""
    instance = Settings(db_path=server.db_path).instance_id

    def settled() -> bool:
        containers = client.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}, sparse=True
        )
        names = [name for c in containers for name in c.attrs.get("Names", [])]
        return not any(job_id in name for name in names) and any(
            name.startswith("/ci-warm-") and c.attrs.get("State") == "running"
            for c in containers
            for name in c.attrs.get("Names", [])
        )

    wait_for(settled, timeout=60, what=f"the server to settle after job {job_id}")


def warm_overhead(bench: Bench, server: ServerProcess, runs: int, table: Table) -> None:
    project = write_project(
        bench.workdir / "warm", bench.requirements("pytest"), {"tests/test_two.py": TWO_TESTS}
    )
    warm_up = submit(project, server)
    settle(bench.docker, server, warm_up.job_id)
    image = environment_image(bench.docker, warm_up.stderr)
    bench.environments.add(image)
    mounted = ["-v", f"{project}:/src:ro", "--user", "1000:1000", "--network", "none"]

    ci_runs: list[Timeline] = []
    docker_runs: list[Timeline] = []
    true_times: list[float] = []
    for n in range(runs):
        order = ("ci", "docker") if n % 2 == 0 else ("docker", "ci")
        for kind in order:
            # Each run's container events are read at once: the engine keeps only a few.
            if kind == "ci":
                job = submit(project, server)
                ci_runs.append(job_timeline(bench.docker, server, job))
                settle(bench.docker, server, job.job_id)
            else:
                run = docker_run([*mounted, image, "sh", "-c", COPY_AND_TEST])
                docker_runs.append(docker_timeline(bench.docker, run))
        true_times.append(docker_run(["--network", "none", image, "true"]).wall)

    ci_times = [run.client_end - run.client_start for run in ci_runs]
    docker_times = [run.client_end - run.client_start for run in docker_runs]
    ratio = statistics.median(ci_times) / statistics.median(docker_times)
    table.section(f"1. warm overhead ({runs} runs each, alternating; image {image})")
    table.add("`ci submit test`", spread(ci_times))
    table.add("`docker run --rm` pytest, same image", spread(docker_times))
    table.add("ratio of medians (goal <= 1.3)", f"{ratio:.2f}")
    table.add("`ci` runs handed a warm container", f"{sum(r.warm for r in ci_runs)} of {runs}")
    table.add("`docker run --rm <image> true`", spread(true_times))
    ci = ci_command()
    table.add(f"`ci --help` ({ci[-1]})", seconds(command_start_up([*ci, "--help"], 5)))
    script = Path(sys.executable).with_name("ci")  # the console script, without a pyenv shim
    if ci != [str(script)] and script.is_file():
        table.add(f"`ci --help` ({script})", seconds(command_start_up([str(script), "--help"], 5)))
    table.add("`python -c pass`", seconds(command_start_up([sys.executable, "-c", "pass"], 5)))

    table.section("1b. where the time goes: median of each phase, `ci submit` | `docker run`")
    shared = [
        phase_medians([[r.client_start, r.ready, r.died, r.client_end] for r in timelines])
        for timelines in (ci_runs, docker_runs)
    ]
    for name, ci, by_hand in zip(SHARED_PHASES, *shared, strict=True):
        table.add(name, f"{millis(ci):>8} | {millis(by_hand):>8}")
    table.add("sum of the medians", f"{millis(sum(shared[0])):>8} | {millis(sum(shared[1])):>8}")

    table.section("1c. a warm `ci submit test` in detail (median of each phase)")
    medians = phase_medians([[r.client_start, *r.server, r.client_end] for r in ci_runs])
    for name, median in zip(CI_PHASES, medians, strict=True):
        table.add(name, millis(median))
    table.add("sum of the medians", millis(sum(medians)))


# -- 2. cold run -------------------------------------------------------------------------------


def cold_run(bench: Bench, table: Table) -> None:
    server = bench.start_server("cold")
    project = write_project(
        bench.workdir / "cold",
        bench.requirements("pytest", "attrs", "six", "iniconfig"),
        {"tests/test_cold.py": COLD_TESTS},
    )
    old_way = ["-v", f"{project}:/src:ro", bench.image, "sh", "-c", OLD_WAY]
    old_before = docker_run(old_way).wall
    cold = submit(project, server)
    bench.environments.add(environment_image(bench.docker, cold.stderr))
    environment = ENVIRONMENT_RE.search(cold.stderr)
    if environment is None or environment.group(2) != "built":
        raise BenchError(f"the first submit did not build an environment:\n{cold.stderr}")
    settle(bench.docker, server, cold.job_id)
    warm = submit(project, server)
    old_after = docker_run(old_way).wall
    built = BUILT_IN_RE.search(cold.stderr)

    table.section("2. cold run (pytest, attrs, six, iniconfig)")
    table.add("old way: pip install + pytest, 1st (before)", seconds(old_before))
    table.add("old way: pip install + pytest, 2nd (after)", seconds(old_after))
    table.add("`ci submit test`, new environment", seconds(cold.wall))
    table.add("  of which building the environment", f"{built.group(1)} s" if built else "n/a")
    table.add("`ci submit test` again (warm)", seconds(warm.wall))


# -- 5. a packaged project ----------------------------------------------------------------


def packaged_project(bench: Bench, server: ServerProcess, runs: int, table: Table) -> None:
    project = bench.workdir / "packaged"
    shutil.copytree(REPO_ROOT / "tests" / "fixtures" / "packaged", project)
    for path in [project, *project.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)  # bind-mounted for user 1000
    pyproject = project / "pyproject.toml"
    pyproject.write_text(f"{pyproject.read_text()}# ci bench run {bench.tag}\n")
    warm_up = submit(project, server)
    settle(bench.docker, server, warm_up.job_id)
    image = environment_image(bench.docker, warm_up.stderr)
    bench.environments.add(image)
    mounted = ["-v", f"{project}:/src:ro", "--user", "1000:1000", "--network", "none", image]

    times: dict[str, list[float]] = {"ci": [], "pytest": [], "install": []}
    for n in range(runs):
        kinds = ("ci", "pytest", "install")
        for kind in kinds if n % 2 == 0 else reversed(kinds):
            if kind == "ci":
                job = submit(project, server)
                times["ci"].append(job.wall)
                settle(bench.docker, server, job.job_id)
            else:
                script = INSTALLED_AND_TEST if kind == "pytest" else INSTALL_AND_TEST
                times[kind].append(docker_run([*mounted, "sh", "-c", script]).wall)

    ratio = statistics.median(times["ci"]) / statistics.median(times["pytest"])
    table.section(f"5. a packaged project, warm ({runs} runs each, alternating; image {image})")
    table.add("`ci submit test` (project installed in the environment)", spread(times["ci"]))
    table.add("`docker run --rm` pytest, same image", spread(times["pytest"]))
    table.add("ratio of medians", f"{ratio:.2f}")
    table.add("`docker run --rm` pip install -e . + pytest", spread(times["install"]))


# -- 3. stream latency -------------------------------------------------------------------------


def stream_latency(bench: Bench, server: ServerProcess, table: Table) -> None:
    project = write_project(
        bench.workdir / "stream",
        bench.requirements("pytest"),
        {"pytest.ini": "[pytest]\naddopts = -s\n", "tests/test_stream.py": STREAM_TEST},
    )
    archive = bench.workdir / "stream.zip"
    build_archive(project, archive)
    client = CIClient(server.url, api_key=server.api_key)
    job = client.submit(archive, timeout_seconds=120)
    latencies: list[float] = []
    end: dict[str, Any] = {}
    # The job's own timeout (120 s) is the deadline: the server ends the stream by then.
    for event in client.events(job["job_id"], after=0):
        arrived = time.time()
        if event.type == "end":
            end = event.data
            break
        running_in = RUNNING_IN_RE.search("[ci] " + event.data.get("text", ""))
        if running_in is not None and event.data.get("stream") == "system":
            bench.environments.add(running_in.group(1))
        match = STREAM_LINE_RE.search(event.data.get("text", "")) if event.type == "log" else None
        if match is not None and event.data.get("stream") == "stdout":
            latencies.append(arrived - float(match.group(1)))
    if end.get("status") != "succeeded" or not latencies:
        raise BenchError(f"the stream job ended {end.get('status')}: {end.get('reason')}")
    table.section(f"3. stream latency ({STREAM_LINES} lines, one every 10 ms, pytest -s)")
    table.add("lines received", f"{len(latencies)}/{STREAM_LINES}")
    table.add(
        "latency p50 / p99 / max",
        " / ".join(
            millis(value)
            for value in (
                statistics.median(latencies),
                percentile(latencies, 0.99),
                max(latencies),
            )
        ),
    )


# -- 4. listing at scale -----------------------------------------------------------------------


def finished_jobs(count: int) -> Iterator[Job]:
    """`count` finished jobs, one a minute up to now, oldest first; one in ten failed."""
    now = utcnow()
    for n in range(count):
        created = now - timedelta(minutes=count - n)
        failed = n % 10 == 0
        yield Job(
            id=new_job_id(),
            status=JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
            created_at=created,
            started_at=created + timedelta(seconds=1),
            finished_at=created + timedelta(seconds=5 + n % 30),
            exit_code=1 if failed else 0,
            timeout_seconds=1800.0,
            summary=TestSummary(passed=40 + n % 7, failed=1 if failed else 0, skipped=n % 3),
        )


async def fill_database(path: Path, count: int) -> list[str]:
    """Write `count` finished jobs in one transaction; their ids, oldest first."""
    store = SqliteStore(path)
    await store.open()  # creates the schema through the store's migrations
    try:
        rows = [job_row(job) for job in finished_jobs(count)]
        marks = ",".join("?" * len(rows[0]))
        await store.db.executemany(f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES ({marks})", rows)
        await store.db.commit()
    finally:
        await store.close()
    return [row[0] for row in rows]


def timed_get(server: ServerProcess, path: str, expected: int) -> float:
    started = time.monotonic()
    response = server.get(path)
    elapsed = time.monotonic() - started
    response.raise_for_status()
    if len(response.json()) != expected:
        raise BenchError(f"GET {path} returned {len(response.json())} jobs, not {expected}")
    return elapsed


def timed_ci_list(bench: Bench, server: ServerProcess) -> float:
    started = time.monotonic()
    result = run_ci("list", "--json", "--limit", "50", cwd=bench.workdir, server=server, timeout=60)
    elapsed = time.monotonic() - started
    if result.returncode != 0 or '"job_id"' not in result.stdout:
        raise BenchError(f"`ci list --json` exited {result.returncode}: {result.stderr}")
    return elapsed


def listing(bench: Bench, count: int, table: Table) -> None:
    folder = bench.workdir / "listing"
    folder.mkdir()
    env = server_env(folder, bench.image)
    db_path = Path(env["CI_DB_PATH"])
    started = time.monotonic()
    ids = asyncio.run(fill_database(db_path, count))
    filled = time.monotonic() - started
    deep = ids[len(ids) // 10]  # newest first, this one is 90% of the way down
    server = ServerProcess(db_path=db_path, env=env)
    bench.servers.append(server)
    started = time.monotonic()
    try:
        server.start()
    except AssertionError as e:
        raise BenchError(f"the server did not start on the large database: {e}") from e
    start_up = time.monotonic() - started
    assert server.process is not None
    rss_start = resident_mib(server.process.pid)

    measures: dict[str, Callable[[], float]] = {
        "GET /jobs?limit=50": lambda: timed_get(server, "/jobs?limit=50", 50),
        "GET /jobs?limit=50&before=<90% deep>": lambda: timed_get(
            server, f"/jobs?limit=50&before={deep}", 50
        ),
        "`ci list --json --limit 50`": lambda: timed_ci_list(bench, server),
    }
    table.section(f"4. listing at scale ({count:,} finished jobs in SQLite)")
    table.add(
        "database written (one transaction)",
        f"{seconds(filled)}, {db_path.stat().st_size / 1024**2:.1f} MiB",
    )
    table.add("server start-up on it (to /health)", seconds(start_up))
    for name, measure in measures.items():
        first = measure()
        times = [measure() for _ in range(LISTING_REPEATS)]
        table.add(name, f"median {millis(statistics.median(times))} (first {millis(first)})")
    rss_after = resident_mib(server.process.pid)
    table.add(
        "server RSS after start / after the listings",
        " / ".join("n/a" if v is None else f"{v:.1f} MiB" for v in (rss_start, rss_after)),
    )
    server.stop()


# -- main --------------------------------------------------------------------------------------


def run(options: argparse.Namespace, workdir: Path) -> None:
    table = Table()
    table.section("machine")
    table.add("cpu cores (os.cpu_count)", str(os.cpu_count()))
    table.add("load average 1/5/15 min, at start", load_average())
    bench = Bench(workdir, options.image, connect_docker(options.image))
    try:
        warm = bench.start_server("warm") if {"1", "3", "5"} & set(options.parts) else None
        if "1" in options.parts and warm is not None:
            warm_overhead(bench, warm, options.runs, table)
        if "2" in options.parts:
            cold_run(bench, table)
        if "3" in options.parts and warm is not None:
            stream_latency(bench, warm, table)
        if "5" in options.parts and warm is not None:
            packaged_project(bench, warm, options.runs, table)
        if warm is not None:
            warm.stop()
        if "4" in options.parts:
            listing(bench, options.jobs, table)
    finally:
        bench.close()
    table.section("machine, after")
    table.add("load average 1/5/15 min, at end", load_average())
    table.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="warm runs of each kind (part 1)")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs in the database (part 4)")
    parser.add_argument("--parts", default="12345", help="which parts to run (default: 12345)")
    parser.add_argument(
        "--image",
        default=os.environ.get("CI_RUNNER_IMAGE") or DEFAULT_IMAGE,
        help="runner image (default: $CI_RUNNER_IMAGE or %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args(argv)
    if options.runs < 1 or options.jobs < 1000 or not set(options.parts) <= set("12345"):
        parser.error("--runs must be >= 1, --jobs >= 1000, --parts digits among 1234")

    with contextlib.ExitStack() as cleanup:
        if options.keep:
            workdir = Path(tempfile.mkdtemp(prefix="ci-bench-speed-"))
            print(f"keeping {workdir} (databases, server logs)", file=sys.stderr)
        else:
            temporary = tempfile.TemporaryDirectory(
                prefix="ci-bench-speed-", ignore_cleanup_errors=True
            )
            workdir = Path(cleanup.enter_context(temporary))
        try:
            run(options, workdir)
        except (BenchError, ClientError) as e:
            print(f"speed: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # everything started has been stopped on the way up
            print("speed: interrupted", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
