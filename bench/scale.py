"""Several processes on one database: how fast the queue drains, how soon a queued job
starts, how soon a line reaches a client of another process.

    python bench/scale.py [--database-url URL] [--jobs 1000] [--samples 100] [--poll-samples 30]
                          [--docker-jobs 40]

Every process is real (`ci-server` apps under uvicorn, `ci-worker`'s run_worker, PostgreSQL
or an SQLite file); only the executor is a no-op (NoopExecutor: a job "runs" in no time, or
prints timestamped lines), so that the figures are the service's, not Docker's; part 1b
alone runs real containers. PostgreSQL is the server at --database-url (default:
$CI_TEST_DATABASE_URL, else the one scripts/ensure-postgres.sh starts); each measurement
gets a database of its own, dropped after.

1. Jobs claimed per second: --jobs queued jobs stored first, then 1, 2 or 4 worker processes
   (CI_MAX_CONCURRENT_JOBS=4 each) drain them; the rate is the jobs over the time from the
   first claim to the last (the database's timestamps). Every job must run exactly once.
1b. The same on the real Docker engine (the worker processes' DockerExecutor, $CI_RUNNER_IMAGE,
   warm containers as configured, default 2): a one-test project whose environment one job
   builds first, then --docker-jobs queued jobs; the rate is the jobs over the time from the
   first claim to the last job's end (a job's container, not the queue, sets the pace).
   The environment images and containers of each measurement are removed after it.
2. Queued to running: jobs submitted one at a time through an API process (POST /jobs) while
   a worker process is free; start_time - created_at. With NOTIFY, and with polling only
   (CI_DATABASE_LISTEN=false on every process).
3. Live event latency: a job prints a line every 10 ms with the time in it; a client of
   another API process reads the SSE stream; when it got the line minus when it was printed.
The same three for SQLite in one process (`ci-server` with its embedded worker).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import multiprocessing
import os
import random
import socket
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ci_server.models import EventType, Job, JobEvent, JobStatus, new_job_id
from ci_server.runner.executor import (
    INSTANCE_LABEL,
    OWNER_LABEL,
    ImageInfo,
    OutputSink,
    RunSpec,
)
from ci_server.settings import Settings
from ci_server.store.factory import open_blob_store, open_store

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:55432/postgres"
LINES_VARIABLE = "BENCH_LINES"
LINE_INTERVAL = 0.01
PROJECT = {
    "requirements.txt": "pytest\n",
    "test_sample.py": "def test_ok():\n    pass\n",
}


# -- the no-op executor and the processes ------------------------------------------------------


class NoopExecutor:
    """Runs nothing: a job exits 0 at once, or prints $BENCH_LINES lines `T <time>`, one every
    10 ms; environment builds succeed and are remembered."""

    def __init__(self) -> None:
        self.images: dict[str, ImageInfo] = {}

    async def __aenter__(self) -> NoopExecutor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        for _ in range(int(spec.env.get(LINES_VARIABLE, "0"))):
            on_output(f"T {time.time():.6f}\n".encode())
            await asyncio.sleep(LINE_INTERVAL)
        return 0

    async def remove_orphans(self) -> int:
        return 0

    async def image_id(self, image: str) -> str:
        return f"sha256:{image}"

    async def build_image(
        self, spec: RunSpec, tag: str, labels: Mapping[str, str], on_output: OutputSink
    ) -> int:
        self.images[tag] = ImageInfo(tag, time.time())
        return 0

    async def environment_images(self) -> list[ImageInfo]:
        return list(self.images.values())

    async def image_has_file(self, image: str, path: str) -> bool:
        return False

    async def remove_image(self, tag: str) -> None:
        self.images.pop(tag, None)


def _serve(env: dict[str, str], port: int, worker: bool) -> None:
    """A process: a `ci-server` app (with its worker, or --no-worker) on the no-op executor."""
    import uvicorn

    from ci_server.app import create_app

    os.environ.update(env)
    app = create_app(Settings(), executor=NoopExecutor(), worker=worker)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _work(env: dict[str, str], docker: bool) -> None:
    """A process: `ci-worker` on the no-op executor, or on Docker as `ci-worker` runs it,
    until SIGTERM."""
    from ci_server.worker.__main__ import run_worker

    os.environ.update(env)
    asyncio.run(run_worker(Settings(), executor=None if docker else NoopExecutor()))


def _claim_only(env: dict[str, str], name: str) -> None:
    """A process that only claims (JobStore.claim_next_job in a loop) until the queue is empty."""
    os.environ.update(env)

    async def claim() -> None:
        async with open_store(Settings()) as store:
            while await store.claim_next_job(name):
                pass

    asyncio.run(claim())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Deployment:
    """The processes of one measurement; `api` is the URL a client uses."""

    env: dict[str, str]
    processes: list[BaseProcess]
    api: str | None = None

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()


SPAWN = multiprocessing.get_context("spawn")


def start_api(env: dict[str, str], *, worker: bool) -> tuple[str, BaseProcess]:
    port = free_port()
    process = SPAWN.Process(target=_serve, args=(env, port, worker))
    process.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=1).ok:
                return url, process
        if time.monotonic() > deadline or not process.is_alive():
            raise SystemExit(f"the API process on port {port} did not start")
        time.sleep(0.1)


def start_worker(env: dict[str, str], name: str, *, docker: bool = False) -> BaseProcess:
    process = SPAWN.Process(target=_work, args=({**env, "CI_WORKER_NAME": name}, docker))
    process.start()
    return process


@contextlib.contextmanager
def deployment(
    env: dict[str, str],
    *,
    apis: int = 0,
    one_process: bool = False,
    workers: int = 0,
    docker: bool = False,
) -> Iterator[Deployment]:
    running = Deployment(env, [])
    try:
        if one_process:
            running.api, process = start_api(env, worker=True)
            running.processes.append(process)
        for _ in range(apis):
            running.api, process = start_api(env, worker=False)
            running.processes.append(process)
        for n in range(workers):
            running.processes.append(start_worker(env, f"bench-{n + 1}", docker=docker))
        yield running
    finally:
        running.stop()


# -- databases -------------------------------------------------------------------------------


async def _execute(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def database(kind: str, server: str, folder: Path) -> Iterator[dict[str, str]]:
    """The CI_* settings of a new database: an SQLite file, or a PostgreSQL database."""
    data = folder / uuid.uuid4().hex[:8]
    env = {"CI_DATA_DIR": str(data / "data"), "CI_AUTH": "off", "CI_WARM_CONTAINERS": "0"}
    if kind == "sqlite":
        yield {**env, "CI_DB_PATH": str(data / "ci.db")}
        return
    name = f"bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_execute(server, f"CREATE DATABASE {name}"))
    try:
        url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
        yield {**env, "CI_DATABASE_URL": url, "CI_DB_PATH": str(data / "unused.db")}
    finally:
        asyncio.run(_execute(server, f"DROP DATABASE {name} WITH (FORCE)"))


def project_zip(lines: int = 0) -> bytes:
    files = dict(PROJECT)
    if lines:
        files["ci.toml"] = f'[env]\n{LINES_VARIABLE} = "{lines}"\n'
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def settings_of(env: Mapping[str, str]) -> Settings:
    with _environment(env):
        return Settings()


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# -- 1. jobs claimed per second ----------------------------------------------------------------


async def queue_jobs(settings: Settings, count: int) -> None:
    """`count` queued jobs, stored as the API stores them, each with its upload."""
    archive = project_zip()
    async with open_store(settings) as store, open_blob_store(settings) as blobs:
        for _ in range(count):
            job = Job(id=new_job_id())
            await blobs.put(job.id, io.BytesIO(archive))
            await store.append_events([JobEvent(job.id, 1, EventType.STATUS, {"status": "queued"})])
            await store.add_job(job)


@dataclass
class Drained:
    """The `count` newest jobs, all ended: how fast they were claimed, by whom, how often."""

    jobs: list[Job]
    run_twice: int

    @property
    def workers(self) -> set[str]:
        return {job.worker or "" for job in self.jobs}

    def claims_per_second(self, *, until_end: bool = False) -> float:
        """The jobs over the time from the first claim to the last (or to the last end)."""
        first = min(job.started_at for job in self.jobs if job.started_at)
        last = max(
            (job.finished_at if until_end else job.started_at)
            for job in self.jobs
            if job.started_at and job.finished_at
        )
        return len(self.jobs) / (last - first).total_seconds()

    def median_run_seconds(self) -> float:
        return statistics.median(
            (job.finished_at - job.started_at).total_seconds()
            for job in self.jobs
            if job.started_at and job.finished_at
        )


async def drained(settings: Settings, count: int) -> Drained:
    """Wait until the `count` newest jobs have ended (each must succeed)."""
    async with open_store(settings) as store:
        while True:
            jobs = await store.list_jobs(limit=count)
            if all(job.status.is_terminal for job in jobs):
                break
            await asyncio.sleep(0.2)
        assert all(job.status is JobStatus.SUCCEEDED for job in jobs), {j.status for j in jobs}
        twice = 0
        for job in jobs:
            events = await store.events_after(job.id)
            runs = sum(1 for e in events if e.data.get("status") == "running")
            ends = sum(1 for e in events if e.type is EventType.END)
            twice += (runs, ends) != (1, 1)
    return Drained(jobs, twice)


def claims_per_second(env: dict[str, str], jobs: int, workers: int) -> tuple[float, int]:
    settings = settings_of(env)
    asyncio.run(queue_jobs(settings, jobs))
    env = {**env, "CI_MAX_CONCURRENT_JOBS": "4"}
    one_process = "CI_DATABASE_URL" not in env
    with deployment(env, one_process=one_process, workers=0 if one_process else workers):
        ended = asyncio.run(drained(settings, jobs))
    assert one_process or len(ended.workers) == workers, ended.workers
    return ended.claims_per_second(), ended.run_twice


def docker_claims_per_second(env: dict[str, str], jobs: int, workers: int) -> Drained:
    """1b: `workers` worker processes on Docker, 4 jobs at once each; one job builds the
    environment, then `jobs` more are queued and drained."""
    env = {key: value for key, value in env.items() if key != "CI_WARM_CONTAINERS"}
    env["CI_MAX_CONCURRENT_JOBS"] = "4"
    settings = settings_of(env)
    try:
        with deployment(env, workers=workers, docker=True):
            asyncio.run(queue_jobs(settings, 1))
            asyncio.run(drained(settings, 1))
            asyncio.run(queue_jobs(settings, jobs))
            ended = asyncio.run(drained(settings, jobs))
    finally:
        remove_docker_leftovers(settings.instance_id)
    assert ended.run_twice == 0 and len(ended.workers) == workers, ended.workers
    return ended


def remove_docker_leftovers(instance: str) -> None:
    """The containers and environment images of one measurement's database."""
    import docker

    client = docker.from_env()
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}
        ):
            container.remove(force=True)
        for image in client.images.list(filters={"label": f"{OWNER_LABEL}={instance}"}):
            client.images.remove(image.id, force=True)
    finally:
        client.close()


async def claim_span(settings: Settings, count: int) -> tuple[float, int]:
    """(claims per second from the first claim to the last, jobs claimed by no one)."""
    async with open_store(settings) as store:
        jobs = await store.list_jobs(limit=count)
    started = sorted(job.started_at for job in jobs if job.started_at)
    return count / (started[-1] - started[0]).total_seconds(), count - len(started)


def claims_alone(env: dict[str, str], jobs: int, processes: int) -> float:
    """The queue's own pace: `processes` processes that only claim, no job run."""
    settings = settings_of(env)

    async def queue() -> None:
        async with open_store(settings) as store:
            for _ in range(jobs):
                await store.add_job(Job(id=new_job_id()))

    asyncio.run(queue())
    claimers = [
        SPAWN.Process(target=_claim_only, args=(env, f"claimer-{n}")) for n in range(processes)
    ]
    for claimer in claimers:
        claimer.start()
    for claimer in claimers:
        claimer.join()
    rate, unclaimed = asyncio.run(claim_span(settings, jobs))
    assert unclaimed == 0, unclaimed
    return rate


# -- 2. queued to running --------------------------------------------------------------------


def queued_to_running(api: str, samples: int, pause: float) -> list[float]:
    """Jobs submitted one at a time, each `pause` seconds at most after the previous one
    ended (at random: not in step with a worker's poll)."""
    archive = project_zip()
    latencies = []
    for _ in range(samples):
        time.sleep(random.uniform(0, pause))
        response = requests.post(
            f"{api}/jobs", files={"archive": ("p.zip", archive, "application/zip")}, timeout=30
        )
        response.raise_for_status()
        job_id = response.json()["job_id"]
        while (job := requests.get(f"{api}/jobs/{job_id}", timeout=30).json())[
            "start_time"
        ] is None:
            time.sleep(0.005)
        started = _time(job["start_time"]) - _time(job["created_at"])
        latencies.append(started)
        while requests.get(f"{api}/jobs/{job_id}", timeout=30).json()["end_time"] is None:
            time.sleep(0.005)  # the worker is free again before the next one
    return latencies


def _time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


# -- 3. live event latency -------------------------------------------------------------------


def event_latencies(api: str, lines: int) -> list[float]:
    response = requests.post(
        f"{api}/jobs",
        files={"archive": ("p.zip", project_zip(lines), "application/zip")},
        timeout=30,
    )
    response.raise_for_status()
    job_id = response.json()["job_id"]
    latencies = []
    with requests.get(f"{api}/jobs/{job_id}/events", stream=True, timeout=60) as stream:
        for raw in stream.iter_lines():
            if not raw.startswith(b"data:"):
                continue
            received = time.time()
            event = json.loads(raw[5:])
            text = event.get("text") or ""
            if event["type"] == "log" and text.startswith("T "):
                latencies.append(received - float(text[2:]))
            if event["type"] == "end":
                break
    return latencies


# -- the report ------------------------------------------------------------------------------


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"


def measure(
    what: str, kind: str, server: str, folder: Path, run: Callable[[dict[str, str]], str]
) -> None:
    with database(kind, server, folder) as env:
        print(f"{what:<64} {run(env)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Several processes on one database.")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CI_TEST_DATABASE_URL", DEFAULT_POSTGRES),
        help="a PostgreSQL server where databases may be created",
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs for the claim rate")
    parser.add_argument("--samples", type=int, default=100, help="latency samples")
    parser.add_argument("--poll-samples", type=int, default=30, help="samples when polling")
    parser.add_argument("--lines", type=int, default=300, help="lines for the event latency")
    parser.add_argument(
        "--docker-jobs", type=int, default=40, help="jobs for the claim rate on Docker"
    )
    args = parser.parse_args()
    server = args.database_url
    with tempfile.TemporaryDirectory(prefix="ci-bench-scale-") as temporary:
        folder = Path(temporary)

        def claims(workers: int) -> Callable[[dict[str, str]], str]:
            def run(env: dict[str, str]) -> str:
                rate, twice = claims_per_second(env, args.jobs, workers)
                return f"{rate:,.0f} jobs/s; run more than once: {twice} of {args.jobs}"

            return run

        def on_docker(workers: int) -> Callable[[dict[str, str]], str]:
            def run(env: dict[str, str]) -> str:
                ended = docker_claims_per_second(env, args.docker_jobs, workers)
                return (
                    f"{ended.claims_per_second(until_end=True):.2f} jobs/s; "
                    f"a job's run: median {ended.median_run_seconds():.2f} s"
                )

            return run

        def alone(processes: int) -> Callable[[dict[str, str]], str]:
            return lambda env: f"{claims_alone(env, args.jobs, processes):,.0f} claims/s"

        def latency(samples: int, pause: float, **extra: str) -> Callable[[dict[str, str]], str]:
            def run(env: dict[str, str]) -> str:
                env = {**env, **extra, "CI_MAX_CONCURRENT_JOBS": "1"}
                split = "CI_DATABASE_URL" in env
                with deployment(
                    env, apis=int(split), one_process=not split, workers=int(split)
                ) as running:
                    assert running.api is not None
                    return percentiles(queued_to_running(running.api, samples, pause))

            return run

        def events(env: dict[str, str]) -> str:
            split = "CI_DATABASE_URL" in env
            with deployment(
                env, apis=int(split), one_process=not split, workers=int(split)
            ) as running:
                assert running.api is not None
                return percentiles(event_latencies(running.api, args.lines))

        pg, sqlite = ("pg", server, folder), ("sqlite", server, folder)
        for n in (1, 2, 4):
            measure(f"PostgreSQL: jobs claimed and run per second, {n} worker(s)", *pg, claims(n))
        for n in (1, 2, 4):
            measure(f"PostgreSQL, Docker: jobs run per second, {n} worker(s)", *pg, on_docker(n))
        for n in (1, 2, 4):
            measure(f"PostgreSQL: claims alone per second, {n} process(es)", *pg, alone(n))
        measure("PostgreSQL: queued to running, NOTIFY", *pg, latency(args.samples, 0.05))
        measure(
            "PostgreSQL: queued to running, polling only",
            *pg,
            latency(args.poll_samples, 2.5, CI_DATABASE_LISTEN="false"),
        )
        measure("PostgreSQL: line printed to client of another API", *pg, events)
        measure("SQLite, one process: jobs claimed and run per second", *sqlite, claims(1))
        measure("SQLite, one process: queued to running", *sqlite, latency(args.samples, 0.05))
        measure("SQLite, one process: line printed to client", *sqlite, events)


if __name__ == "__main__":
    main()
