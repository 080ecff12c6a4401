"""Responsiveness benchmark: how long `GET /health` takes while the server is under heavy output.

    python bench/responsiveness.py [--line-mb 50] [--watchers 150] [--lines 50000] [--parts 123]

Starts a real `ci-server` process (free port, temporary database and data folder, default
settings otherwise) and, after a warm-up job that builds the environment, runs three parts:

1. a test printing one line of --line-mb MB (no newline until its end), followed live by one
   SSE client; three such jobs, one after the other;
2. a chatty test printing --lines lines over about ten seconds, in bursts of 100 lines,
   followed live by --watchers SSE clients (the test waits two seconds before it prints,
   time for them to connect);
3. --watchers SSE clients replaying a finished job of part 1's kind (20 MiB of log kept, the
   server's default) from the store.

The SSE clients run in a child process (asyncio, raw sockets, reading and discarding), so
that the probe, a thread of this process, measures the server and not this process's
other work. The probe sends `GET /health` every 20 ms from the submit (part 3: from the
clients' start) until every client has the job's `end` event. It prints, for each part,
the probe's p50 / p99 / max, how many answers it got, the jobs' time and status, and
whether every client got the end. It stops everything it started. `--profile DIR` samples
the server with py-spy during each part (DIR/part1.txt, collapsed stacks). Exit status 0
when the jobs succeeded and every client got the end, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from bench.event_ingest import (  # noqa: E402
    DEFAULT_IMAGE,
    BenchError,
    check_docker,
    cpu_seconds,
    print_table,
    remove_leftover_containers,
    run_in_workdir,
    wait_until_finished,
)
from ci_client.archive import build_archive  # noqa: E402
from ci_client.client import CIClient  # noqa: E402
from tests.e2e.harness import ServerProcess, server_env  # noqa: E402

PROBE_SECONDS = 0.02
END_MARKER = b"event: end"


# -- the projects --------------------------------------------------------------------------


def write_project(root: Path, test_body: str) -> Path:
    """A project with one test running `test_body` (pytest -s: its output is the job's)."""
    root.mkdir(parents=True)
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\naddopts = -s\n")
    (root / "tests").mkdir()
    test = "import sys\n\n\ndef test_output() -> None:\n" + textwrap.indent(test_body, "    ")
    (root / "tests" / "test_output.py").write_text(test)
    return root


def long_line_body(megabytes: int) -> str:
    return textwrap.dedent(
        f"""\
        piece = "x" * (1024 * 1024)
        for _ in range({megabytes}):
            sys.stdout.write(piece)
        sys.stdout.write("\\n")
        sys.stdout.flush()
        """
    )


def chatty_body(lines: int) -> str:
    return textwrap.dedent(
        f"""\
        import time

        time.sleep(2)
        write = sys.stdout.write
        for i in range({lines}):
            write(f"chatty line {{i}} of a test that prints a lot\\n")
            if i % 100 == 99:
                time.sleep({10 / max(1, lines // 100)})
        sys.stdout.flush()
        """
    )


# -- the SSE clients (in a child process) ---------------------------------------------------


async def _watch(host: str, port: int, path: str) -> dict[str, Any]:
    """Read one SSE stream to its `end` event, discarding it; bytes read and whether it ended."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    received, tail, ended = 0, b"", False
    try:
        while not ended:
            data = await reader.read(1 << 16)
            if not data:
                break
            received += len(data)
            # One write per batch: the end event's frame is never cut by the chunked
            # encoding, only by reads; the tail covers that.
            ended = END_MARKER in tail + data
            tail = data[-len(END_MARKER) :]
    finally:
        writer.close()
    return {"bytes": received, "ended": ended}


async def _watch_all(url: str, job_id: str, count: int) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    path = f"/jobs/{job_id}/events"
    results = await asyncio.gather(
        *(_watch(host, int(port), path) for _ in range(count)), return_exceptions=True
    )
    return [
        r if isinstance(r, dict) else {"bytes": 0, "ended": False, "error": repr(r)}
        for r in results
    ]


def watchers_child(url: str, job_id: str, count: int) -> None:
    print(json.dumps(asyncio.run(_watch_all(url, job_id, count))))


def start_watchers(url: str, job_id: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--watch", url, job_id, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )


# -- the probe ----------------------------------------------------------------------------


class HealthProbe(threading.Thread):
    """`GET /health` every PROBE_SECONDS until stopped; keeps each answer's time."""

    def __init__(self, url: str) -> None:
        super().__init__(name="health-probe", daemon=True)
        self.url = f"{url}/health"
        self.latencies: list[float] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        session = requests.Session()
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                session.get(self.url, timeout=30).raise_for_status()
                self.latencies.append(time.monotonic() - started)
            except requests.RequestException:
                self.failures += 1
            self._stop_event.wait(PROBE_SECONDS)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(35)

    def summary(self) -> str:
        if not self.latencies:
            return f"no answer ({self.failures} failures)"
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        text = f"{p50 * 1000:.0f} / {p99 * 1000:.0f} / {ordered[-1] * 1000:.0f} ms"
        text += f" ({len(ordered)} answers"
        return text + (f", {self.failures} failed)" if self.failures else ")")


# -- the benchmark -------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    title: str
    body: str
    watchers: int
    jobs: int = 1
    replay: bool = False
    """The jobs run to their end first, unmeasured: the clients replay them from the store."""


@dataclass
class Result:
    jobs: list[dict[str, Any]]
    health: str
    watchers: list[dict[str, Any]]
    server_cpu: float | None

    @property
    def passed(self) -> bool:
        succeeded = all(job["status"] == "succeeded" for job in self.jobs)
        return succeeded and all(w["ended"] for w in self.watchers)


def submit(client: CIClient, workdir: Path, name: str, body: str) -> str:
    archive = workdir / f"{name}.zip"
    build_archive(write_project(workdir / name, body), archive)
    return str(client.submit(archive, timeout_seconds=600)["job_id"])


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the server (`pip install py-spy`), as collapsed stacks (--format raw)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_part(
    part: Part, number: int, server: ServerProcess, workdir: Path, profile: Path | None
) -> Result:
    assert server.process is not None
    client = CIClient(server.url)
    jobs: list[dict[str, Any]] = []
    if part.replay:
        for run in range(part.jobs):
            job_id = submit(client, workdir, f"part{number}-{run}", part.body)
            jobs.append(wait_until_finished(server, job_id, time.monotonic() + 900))
    cpu_before = cpu_seconds(server.process.pid)
    profiler = None
    if profile is not None:
        profiler = start_profiler(server.process.pid, profile / f"part{number}.txt")
    probe = HealthProbe(server.url)
    probe.start()
    seen: list[dict[str, Any]] = []
    try:
        for run in range(part.jobs):
            if part.replay:
                job_id = jobs[run]["job_id"]
            else:
                job_id = submit(client, workdir, f"part{number}-{run}", part.body)
            watchers = start_watchers(server.url, job_id, part.watchers)
            try:
                out, _ = watchers.communicate(timeout=900)
            finally:
                if watchers.poll() is None:
                    watchers.kill()
                    watchers.wait()
            seen += json.loads(out) if out.strip() else []
            if not part.replay:
                jobs.append(wait_until_finished(server, job_id, time.monotonic() + 900))
    finally:
        probe.stop()
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            profiler.wait(60)
    cpu_after = cpu_seconds(server.process.pid)
    return Result(
        jobs=jobs,
        health=probe.summary(),
        watchers=seen,
        server_cpu=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
    )


def report(part: Part, result: Result) -> None:
    ended = sum(w["ended"] for w in result.watchers)
    received = sorted(w["bytes"] for w in result.watchers)
    mib = f"{received[0] / 2**20:.1f} / {received[-1] / 2**20:.1f} MiB" if received else "n/a"
    cpu = "n/a" if result.server_cpu is None else f"{result.server_cpu:.1f} s"
    print(f"\n{part.title}")
    print_table(
        [
            ("cpu cores / 1-min load average", f"{os.cpu_count()} / {os.getloadavg()[0]:.2f}"),
            ("jobs' status", ", ".join(job["status"] for job in result.jobs)),
            (
                "job start -> end",
                ", ".join(f"{job.get('duration_seconds') or 0:.2f} s" for job in result.jobs),
            ),
            ("GET /health p50 / p99 / max", result.health),
            ("SSE clients that got the end", f"{ended}/{len(result.watchers)}"),
            ("bytes each client read (min / max)", mib),
            ("server CPU time", cpu),
        ]
    )
    for w in result.watchers:
        if "error" in w:
            print(f"a client failed: {w['error']}", file=sys.stderr)
            break


def run(options: argparse.Namespace, workdir: Path) -> int:
    docker_host = os.environ.get("CI_DOCKER_HOST") or None
    check_docker(options.image, docker_host)
    env = server_env(workdir, options.image, {"CI_AUTH": "off"})  # loopback only
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env)
    parts = {
        "1": Part(
            f"1. one line of {options.line_mb} MB, 1 SSE client, 3 jobs",
            long_line_body(options.line_mb),
            watchers=1,
            jobs=3,
        ),
        "2": Part(
            f"2. {options.lines:,} lines over 10 s, {options.watchers} SSE clients",
            chatty_body(options.lines),
            watchers=options.watchers,
        ),
        "3": Part(
            f"3. {options.watchers} SSE clients replay a finished job of one {options.line_mb} MB"
            " line",
            long_line_body(options.line_mb),
            watchers=options.watchers,
            replay=True,
        ),
    }
    passed = True
    try:
        try:
            server.start()
        except AssertionError as e:
            raise BenchError(f"the server did not start: {e}") from e
        client = CIClient(server.url)
        warm_up = submit(client, workdir, "warm-up", "pass\n")  # builds the environment
        wait_until_finished(server, warm_up, time.monotonic() + 600)
        for number, part in parts.items():
            if number in options.parts:
                result = run_part(part, int(number), server, workdir, options.profile)
                report(part, result)
                passed = passed and result.passed
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
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--watch"]:
        url, job_id, count = arguments[1:4]
        watchers_child(url, job_id, int(count))
        return 0
    parser = argparse.ArgumentParser(description="GET /health under heavy output.")
    parser.add_argument("--line-mb", type=int, default=50, help="part 1: the line's size, MB")
    parser.add_argument("--watchers", type=int, default=150, help="part 2: SSE clients")
    parser.add_argument("--lines", type=int, default=50_000, help="part 2: lines printed")
    parser.add_argument("--parts", default="123", help="which parts to run (default: 123)")
    parser.add_argument(
        "--image",
        default=os.environ.get("CI_RUNNER_IMAGE") or DEFAULT_IMAGE,
        help="runner image (default: $CI_RUNNER_IMAGE or %(default)s)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write py-spy's collapsed stacks of the server, one file per part, in this folder",
    )
    options = parser.parse_args(arguments)
    if min(options.line_mb, options.watchers, options.lines) < 1:
        parser.error("--line-mb, --watchers and --lines must be at least 1")
    return run_in_workdir("responsiveness", options.keep, lambda workdir: run(options, workdir))


if __name__ == "__main__":
    sys.exit(main())
