"""Event-ingest benchmark: one job floods N output lines; K SSE watchers follow it live.

    python bench/event_ingest.py [--lines 200000] [--watchers 1]

Starts a real `ci-server` process (free port, temporary database and data folder), submits a
temporary project whose single test writes N numbered lines as fast as it can, attaches K
Server-Sent-Events watchers (threads: requests + sseclient-py) and measures:

* events ingested per second: events stored in SQLite / (job end_time - job start_time), and
  the numbered lines per second over the span the server published them in (event times);
* the wall time between the first and the last numbered line each watcher saw, and how far
  behind the server's publication the last line reached them;
* that every line 0..N-1 reached every watcher exactly once and in order, and was stored so;
* the server's resident memory: idle baseline, peak (VmRSS polled every 50 ms, and VmHWM),
  and what it keeps after the job; its CPU time; how long GET /health takes meanwhile.

It prints a table and stops everything it started; the server removes the container. The
exit status is 0 when every check passed, 1 when one failed, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import sseclient

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from ci_client.archive import build_archive  # noqa: E402
from ci_client.client import CIClient, ClientError  # noqa: E402
from ci_server.runner.executor import INSTANCE_LABEL  # noqa: E402
from ci_server.settings import Settings  # noqa: E402
from tests.e2e.harness import ServerProcess, server_env, wait_for  # noqa: E402

DEFAULT_IMAGE = "ci-runner:bookworm"
LINE_PREFIX = "bench-line "
LINE_RE = re.compile(r"bench-line (\d+)")
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "error"})
MIB = 1024**2
RSS_POLL_SECONDS = 0.05
HEALTH_POLL_SECONDS = 0.1
SSE_READ_TIMEOUT = 60.0  # longer than the server's 15 s keep-alive


class BenchError(Exception):
    """The benchmark could not run (no Docker, no image, server failed...)."""


# -- the project under test ----------------------------------------------------------------


def write_project(root: Path, lines: int) -> Path:
    """A project with one test that writes `lines` numbered lines to stdout, then passes."""
    root.mkdir(parents=True)
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\naddopts = -s\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_flood.py").write_text(
        textwrap.dedent(
            f'''\
            import sys

            LINES = {lines}


            def test_flood() -> None:
                write = sys.stdout.write
                write("\\n")  # pytest has printed the test file's name without a newline
                for i in range(LINES):
                    write(f"{LINE_PREFIX}{{i}}\\n")
                sys.stdout.flush()
            '''
        )
    )
    return root


# -- the watchers --------------------------------------------------------------------------


@dataclass
class Watcher:
    """One SSE client following the job's events, checking the numbered lines as they come."""

    number: int
    url: str
    expected_lines: int
    headers: dict[str, str] = field(default_factory=dict)
    """The server's API key, as `Authorization: Bearer ...`."""
    received: int = 0
    next_line: int = 0
    anomalies: int = 0
    first_anomaly: str | None = None
    seq_gaps: int = 0
    last_seq: int = 0
    events: int = 0
    first_line_at: float | None = None  # time.monotonic()
    last_line_at: float | None = None
    last_line_wall: float | None = None  # time.time(), to compare with the server's clock
    end_status: str | None = None
    error: str | None = None
    connected: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _response: requests.Response | None = None

    @property
    def in_order_exactly_once(self) -> bool:
        return (
            self.error is None
            and self.anomalies == 0
            and self.seq_gaps == 0
            and self.received == self.expected_lines
            and self.next_line == self.expected_lines
        )

    @property
    def span_seconds(self) -> float | None:
        if self.first_line_at is None or self.last_line_at is None:
            return None
        return self.last_line_at - self.first_line_at

    def run(self) -> None:
        try:
            self._follow()
        except Exception as e:  # reported in the table, never lost in a thread
            if self.error is None:
                self.error = f"{type(e).__name__}: {e}"
        finally:
            self.connected.set()
            self.done.set()

    def abort(self) -> None:
        if self.error is None:
            self.error = "aborted (deadline)"
        response = self._response
        if response is not None:
            response.close()

    def _anomaly(self, what: str) -> None:
        self.anomalies += 1
        if self.first_anomaly is None:
            self.first_anomaly = what

    def _follow(self) -> None:
        response = requests.get(
            self.url,
            headers={"Accept": "text/event-stream", **self.headers},
            stream=True,
            timeout=(5.0, SSE_READ_TIMEOUT),
        )
        self._response = response
        self.connected.set()
        with response:
            response.raise_for_status()
            for message in sseclient.SSEClient(response.iter_content(chunk_size=None)).events():
                if not message.data:
                    continue
                payload: dict[str, Any] = json.loads(message.data)
                self.events += 1
                seq = int(payload["seq"])
                if seq != self.last_seq + 1:
                    self.seq_gaps += 1
                    if self.first_anomaly is None:
                        self.first_anomaly = f"seq {seq} after {self.last_seq}"
                self.last_seq = seq
                kind = payload["type"]
                if kind == "end":
                    self.end_status = str(payload.get("status"))
                    return
                if kind != "log" or payload.get("stream") != "stdout":
                    continue
                for text in payload.get("text", "").split("\n"):  # the lines that came together
                    match = LINE_RE.fullmatch(text)
                    if match is None:
                        continue
                    now = time.monotonic()
                    if self.first_line_at is None:
                        self.first_line_at = now
                    self.last_line_at = now
                    self.last_line_wall = time.time()
                    self.received += 1
                    line = int(match.group(1))
                    if line != self.next_line:
                        self._anomaly(f"got line {line} where {self.next_line} was due (seq {seq})")
                    self.next_line = line + 1
        if self.end_status is None and self.error is None:
            self.error = "the stream ended without an `end` event"


# -- watching the server -------------------------------------------------------------------


def proc_status_kib(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS, VmHWM...), None once the process is gone."""
    try:
        with Path(f"/proc/{pid}/status").open() as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (/proc/<pid>/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class Poller(threading.Thread):
    """Calls `sample` every `interval` seconds until stopped."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._stop_event = threading.Event()

    def sample(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(35)


class RssSampler(Poller):
    """The peak of a process's VmRSS, polled every RSS_POLL_SECONDS."""

    def __init__(self, pid: int) -> None:
        super().__init__("rss-sampler", RSS_POLL_SECONDS)
        self.pid = pid
        self.peak_kib = 0

    def sample(self) -> None:
        rss = proc_status_kib(self.pid, "VmRSS")
        if rss is not None:
            self.peak_kib = max(self.peak_kib, rss)


class HealthProbe(Poller):
    """How long GET /health takes while the job runs: the server's responsiveness."""

    def __init__(self, url: str) -> None:
        super().__init__("health-probe", HEALTH_POLL_SECONDS)
        self.url = f"{url}/health"
        self.session = requests.Session()
        self.latencies: list[float] = []
        self.failures = 0

    def sample(self) -> None:
        started = time.monotonic()
        try:
            self.session.get(self.url, timeout=30).raise_for_status()
        except requests.RequestException:
            self.failures += 1
            return
        self.latencies.append(time.monotonic() - started)

    def summary(self) -> str:
        if not self.latencies:
            return f"no answer ({self.failures} failures)"
        ordered = sorted(self.latencies)
        median = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        text = f"{median * 1000:.0f} / {p99 * 1000:.0f} / {ordered[-1] * 1000:.0f} ms"
        return text + (f" ({self.failures} failed)" if self.failures else "")


# -- checks and helpers --------------------------------------------------------------------


def docker_client(docker_host: str | None) -> docker.DockerClient:
    return docker.DockerClient(base_url=docker_host) if docker_host else docker.from_env()


def remove_leftover_containers(db_path: Path, docker_host: str | None) -> int:
    """Remove containers the server left (it removes its own, unless it was killed)."""
    instance = Settings(db_path=db_path).instance_id  # the label the server puts on them
    try:
        client = docker_client(docker_host)
    except docker.errors.DockerException:
        return 0
    removed = 0
    try:
        for container in client.containers.list(
            all=True, filters={"label": f"{INSTANCE_LABEL}={instance}"}
        ):
            with contextlib.suppress(docker.errors.DockerException):
                container.remove(force=True)
                removed += 1
    except (docker.errors.DockerException, requests.RequestException):
        pass
    finally:
        client.close()
    return removed


def check_docker(image: str, docker_host: str | None) -> None:
    """Fail early, with a clear message, when Docker or the runner image is missing."""
    try:
        client = docker_client(docker_host)
    except docker.errors.DockerException as e:
        raise BenchError(f"Docker is not available: {e}") from e
    try:
        client.ping()
        client.images.get(image)
    except docker.errors.ImageNotFound as e:
        raise BenchError(
            f"runner image {image!r} not found: build it with scripts/build-runner-image.sh "
            "or pass --image / CI_RUNNER_IMAGE"
        ) from e
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise BenchError(f"the Docker engine does not answer: {e}") from e
    finally:
        client.close()


def wait_until_finished(server: ServerProcess, job_id: str, deadline: float) -> dict[str, Any]:
    """Poll the job until it is terminal; a slow answer is retried, not fatal."""
    while True:
        with contextlib.suppress(requests.RequestException):
            response = server.get(f"/jobs/{job_id}", timeout=30)
            response.raise_for_status()
            job: dict[str, Any] = response.json()
            if job["status"] in TERMINAL:
                return job
        if time.monotonic() > deadline:
            raise BenchError(f"job {job_id} did not finish before the deadline")
        time.sleep(0.2)


@dataclass(frozen=True)
class Stored:
    events: int
    lines: int
    lines_in_order: bool
    seq_contiguous: bool
    first_line_time: datetime | None
    last_line_time: datetime | None


def stored_events(db_path: Path, job_id: str, expected_lines: int) -> Stored:
    """Count the job's events in the database file and check the numbered lines in it."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        (count,) = db.execute("SELECT COUNT(*) FROM events WHERE job_id=?", (job_id,)).fetchone()
        (max_seq,) = db.execute("SELECT MAX(seq) FROM events WHERE job_id=?", (job_id,)).fetchone()
        lines = 0
        in_order = True
        first: str | None = None
        last: str | None = None
        rows = db.execute(
            "SELECT data, time FROM events WHERE job_id=? AND type='log' ORDER BY seq", (job_id,)
        )
        for data, stamp in rows:
            payload = json.loads(data)
            if payload.get("stream") != "stdout":
                continue
            for text in payload.get("text", "").split("\n"):
                match = LINE_RE.fullmatch(text)
                if match is None:
                    continue
                in_order = in_order and int(match.group(1)) == lines
                lines += 1
                first = first or stamp
                last = stamp
    finally:
        db.close()
    return Stored(
        events=count,
        lines=lines,
        lines_in_order=in_order and lines == expected_lines,
        seq_contiguous=max_seq == count,
        first_line_time=datetime.fromisoformat(first) if first else None,
        last_line_time=datetime.fromisoformat(last) if last else None,
    )


def end_is_stored(db_path: Path, job_id: str) -> bool:
    db = sqlite3.connect(db_path, timeout=10)
    try:
        row = db.execute(
            "SELECT 1 FROM events WHERE job_id=? AND type='end' LIMIT 1", (job_id,)
        ).fetchone()
    finally:
        db.close()
    return row is not None


def mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def rate(count: int, span: float | None) -> str:
    return f"{count / span:,.0f}" if span else "n/a"


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    print(f"{'metric':<{width}} | value")
    print(f"{'-' * width}-+-{'-' * value_width}")
    for name, value in rows:
        print(f"{name:<{width}} | {value}")


# -- the benchmark -------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    lines: int
    watchers: int
    image: str
    timeout: float
    keep: bool


@dataclass
class Measures:
    job: dict[str, Any]
    stored: Stored
    watchers: list[Watcher]
    baseline_kib: int | None
    peak_kib: int | None
    hwm_kib: int | None
    after_kib: int | None
    server_cpu: float | None
    bench_cpu: float
    load_before: float
    health: str


def measure(options: Options, workdir: Path, server: ServerProcess) -> Measures:
    """Run the job against a started server and collect every figure."""
    assert server.process is not None
    pid = server.process.pid
    time.sleep(1.0)  # let start-up settle before the idle reading
    baseline_kib = proc_status_kib(pid, "VmRSS")
    load_before = os.getloadavg()[0]
    server_cpu_before = cpu_seconds(pid)
    bench_cpu_before = time.process_time()
    sampler = RssSampler(pid)
    probe = HealthProbe(server.url)
    client = CIClient(server.url, api_key=server.api_key)
    watchers: list[Watcher] = []
    job_id: str | None = None
    try:
        sampler.start()
        archive = workdir / "project.zip"
        build_archive(write_project(workdir / "project", options.lines), archive)
        job_id = str(client.submit(archive, timeout_seconds=options.timeout)["job_id"])
        deadline = time.monotonic() + options.timeout + 60
        probe.start()

        threads: list[threading.Thread] = []
        for number in range(options.watchers):
            watcher = Watcher(
                number, f"{server.url}/jobs/{job_id}/events", options.lines, server.headers
            )
            watchers.append(watcher)
            thread = threading.Thread(target=watcher.run, name=f"watcher-{number}", daemon=True)
            thread.start()
            threads.append(thread)
        for watcher in watchers:
            if not watcher.done.wait(max(0.0, deadline - time.monotonic())):
                break
        for watcher in watchers:
            if not watcher.done.is_set():
                watcher.abort()
        for thread in threads:
            thread.join(10)

        final = wait_until_finished(server, job_id, deadline)
        probe.stop()
        finished_id = job_id
        wait_for(lambda: end_is_stored(server.db_path, finished_id), timeout=60, what="the end")
        after_kib = proc_status_kib(pid, "VmRSS")
        hwm_kib = proc_status_kib(pid, "VmHWM")
        server_cpu_after = cpu_seconds(pid)
        bench_cpu = time.process_time() - bench_cpu_before
        sampler.stop()
    finally:
        sampler.stop()
        probe.stop()
        for watcher in watchers:
            if not watcher.done.is_set():
                watcher.abort()
        if job_id is not None and server.process.poll() is None:
            with contextlib.suppress(ClientError):
                client.cancel(job_id)  # no-op once it has finished
    return Measures(
        job=final,
        stored=stored_events(server.db_path, finished_id, options.lines),
        watchers=watchers,
        baseline_kib=baseline_kib,
        peak_kib=sampler.peak_kib or None,
        hwm_kib=hwm_kib,
        after_kib=after_kib,
        server_cpu=(
            server_cpu_after - server_cpu_before
            if server_cpu_before is not None and server_cpu_after is not None
            else None
        ),
        bench_cpu=bench_cpu,
        load_before=load_before,
        health=probe.summary(),
    )


def report(options: Options, m: Measures) -> bool:
    """Print the table (and what failed, on stderr); say whether every check passed."""
    job, stored, watchers = m.job, m.stored, m.watchers
    started = datetime.fromisoformat(job["start_time"]) if job.get("start_time") else None
    ended = datetime.fromisoformat(job["end_time"]) if job.get("end_time") else None
    job_seconds = (ended - started).total_seconds() if started and ended else None
    first, last = stored.first_line_time, stored.last_line_time
    publish_span = (last - first).total_seconds() if first and last else None
    setup = (first - started).total_seconds() if first and started else None

    spans = [w.span_seconds for w in watchers if w.span_seconds is not None]
    lags = [
        w.last_line_wall - last.timestamp()
        for w in watchers
        if w.last_line_wall is not None and last is not None
    ]
    ok_watchers = sum(w.in_order_exactly_once for w in watchers)
    passed = (
        job["status"] == "succeeded"
        and ok_watchers == len(watchers)
        and stored.lines_in_order
        and stored.seq_contiguous
    )

    def min_max(values: list[float]) -> str:
        if not values:
            return "n/a"
        if len(values) == 1:
            return f"{values[0]:.2f} s"
        return f"{min(values):.2f} / {max(values):.2f} s"

    suffix = " (min / max)" if len(watchers) > 1 else ""
    rows: list[tuple[str, str]] = [
        ("cpu cores (os.cpu_count)", str(os.cpu_count())),
        ("1-min load average before the job", f"{m.load_before:.2f}"),
        ("lines printed (N)", f"{options.lines:,}"),
        ("watchers (K)", str(options.watchers)),
        ("job status", f"{job['status']} (exit {job.get('exit_code')})"),
        ("job start -> end", seconds(job_seconds)),
        ("events stored", f"{stored.events:,}"),
        ("events/s ingested (stored / job time)", rate(stored.events, job_seconds)),
        ("job start -> first line published", seconds(setup)),
        ("first -> last line published (server)", seconds(publish_span)),
        ("lines/s published (server)", rate(options.lines, publish_span)),
        ("numbered lines stored, in order", f"{stored.lines:,}, {stored.lines_in_order}"),
        ("stored seq contiguous 1..max", str(stored.seq_contiguous)),
        ("watchers with 0..N-1 once, in order", f"{ok_watchers}/{len(watchers)}"),
        ("events received per watcher", ", ".join(sorted({f"{w.events:,}" for w in watchers}))),
        (f"watcher first -> last line{suffix}", min_max(spans)),
        ("lines/s per watcher (slowest)", rate(options.lines, max(spans) if spans else None)),
        (f"last line: watcher lag behind publish{suffix}", min_max(lags)),
        ("GET /health during job (p50 / p99 / max)", m.health),
        ("server RSS idle (baseline)", mib(m.baseline_kib)),
        (f"server RSS peak (VmRSS every {RSS_POLL_SECONDS * 1000:.0f} ms)", mib(m.peak_kib)),
        ("server VmHWM (peak since start)", mib(m.hwm_kib)),
        ("server RSS after job", mib(m.after_kib)),
        ("server CPU time (submit -> end stored)", seconds(m.server_cpu)),
        ("benchmark process CPU time (watchers)", seconds(m.bench_cpu)),
    ]
    print_table(rows)

    for w in watchers:
        if not w.in_order_exactly_once:
            print(
                f"watcher {w.number}: {w.received:,} lines, {w.anomalies} out of order, "
                f"{w.seq_gaps} seq gaps (first: {w.first_anomaly}), end={w.end_status}, "
                f"error={w.error}",
                file=sys.stderr,
            )
    if job["status"] != "succeeded":
        print(f"job ended {job['status']}: {job.get('reason')}", file=sys.stderr)
    return passed


def run(options: Options, workdir: Path) -> int:
    docker_host = os.environ.get("CI_DOCKER_HOST") or None
    check_docker(options.image, docker_host)
    # Room for every line (text + newline) with plenty to spare.
    log_bytes = max(64 * MIB, 2 * options.lines * (len(LINE_PREFIX) + 12))
    env = server_env(
        workdir,
        options.image,
        {
            "CI_MAX_LOG_BYTES": str(log_bytes),
            "CI_MAX_CONCURRENT_JOBS": "1",
            "CI_AUTH": "off",  # no API keys: the server listens on loopback only
        },
    )
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env)
    try:
        try:
            server.start()
        except AssertionError as e:
            raise BenchError(f"the server did not start: {e}") from e
        measures = measure(options, workdir, server)
    except BaseException:
        if server.log_path is not None and server.log_path.exists():
            tail = server.log().splitlines()[-20:]
            print("server log (tail):\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        server.stop()
        leftovers = remove_leftover_containers(server.db_path, docker_host)
        if leftovers:
            print(f"removed {leftovers} container(s) the server left", file=sys.stderr)
    return 0 if report(options, measures) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark event ingest: one job printing N lines, K SSE watchers."
    )
    parser.add_argument("--lines", type=int, default=200_000, help="lines the test prints (N)")
    parser.add_argument("--watchers", type=int, default=1, help="SSE watchers (K)")
    parser.add_argument(
        "--image",
        default=os.environ.get("CI_RUNNER_IMAGE") or DEFAULT_IMAGE,
        help="runner image (default: $CI_RUNNER_IMAGE or %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="deadline for the job, seconds"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (database, server log)"
    )
    args = parser.parse_args(argv)
    if args.lines < 1 or args.watchers < 1 or args.timeout <= 0:
        parser.error("--lines and --watchers must be at least 1, --timeout positive")
    options = Options(args.lines, args.watchers, args.image, args.timeout, args.keep)

    return run_in_workdir("event_ingest", options.keep, lambda workdir: run(options, workdir))


def run_in_workdir(name: str, keep: bool, run: Callable[[Path], int]) -> int:
    """Run a benchmark in a new temporary folder, removed after unless `keep`: its status, or
    2 with a message when it could not run (BenchError, ClientError)."""
    workdir = Path(tempfile.mkdtemp(prefix="ci-bench-"))
    try:
        return run(workdir)
    except (BenchError, ClientError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
