"""Huge-report benchmark: a job leaves a JUnit report of 605,780 test cases (about 49 MB).

    python bench/reports.py [--cases 605780] [--fetchers 3] [--page 500]

Starts a real `ci-server` process with its default limits, submits a project whose one test
passes and whose conftest then replaces pytest's report with a forged one of N failed test
cases (as issue 10 found it), and measures:

* the server's resident memory while it takes the report in (VmRSS every 50 ms, VmHWM),
  and the peak of the process it reads reports in;
* the intake: from the job's last output line (the report is written) to the job's end;
* GET /health (every 20 ms) on the idle server, during the job, then while K clients each
  fetch every page of GET /jobs/{id}/tests (`limit` = --page, following `after`):
  p50 / p99 / max;
* the pages: how many, the largest in bytes, each client's time for all of them; and what
  `ci show` does: the failures only, page by page (CIClient.test_results).

It prints a table and stops everything it started. The exit status is 0 when the job
ended as expected, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from bench.event_ingest import (  # noqa: E402
    DEFAULT_IMAGE,
    BenchError,
    HealthProbe,
    RssSampler,
    check_docker,
    mib,
    print_table,
    proc_status_kib,
    remove_leftover_containers,
    seconds,
    wait_until_finished,
)
from ci_client.archive import build_archive  # noqa: E402
from ci_client.client import CIClient  # noqa: E402
from tests.e2e.harness import ServerProcess, server_env  # noqa: E402

HEALTH_EVERY_SECONDS = 0.02
IDLE_SECONDS = 5.0
"""/health is timed this long on the idle server first: the machine's own noise."""
WRITTEN = "bench: report written"


def write_project(root: Path, cases: int) -> Path:
    """One passing test; then the conftest writes the forged report and says so."""
    root.mkdir(parents=True)
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_one.py").write_text("def test_one() -> None:\n    pass\n")
    (root / "conftest.py").write_text(
        textwrap.dedent(
            f"""\
            CASES = {cases}


            def pytest_unconfigure(config):
                with open("/ci-output/junit.xml", "w") as report:
                    report.write('<?xml version="1.0"?><testsuites><testsuite name="pytest">')
                    for n in range(CASES):
                        report.write(
                            f'<testcase classname="t" name="test_{{n:06}}" time="0">'
                            '<failure message="no"/></testcase>'
                        )
                    report.write("</testsuite></testsuites>")
                    size = report.tell()
                print(f"{WRITTEN}: {{CASES}} test cases, {{size}} bytes", flush=True)
            """
        )
    )
    return root


@dataclass
class Fetcher:
    """One client fetching every page of the job's test results."""

    url: str
    page: int
    headers: dict[str, str]
    pages: int = 0
    results: int = 0
    largest: int = 0
    seconds: float = 0.0
    error: str | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        started = time.monotonic()
        params: dict[str, Any] = {"limit": self.page}
        try:
            with requests.Session() as session:
                while True:
                    response = session.get(
                        self.url, params=params, headers=self.headers, timeout=120
                    )
                    response.raise_for_status()
                    self.pages += 1
                    self.largest = max(self.largest, len(response.content))
                    page = response.json()
                    self.results += len(page)
                    # A server without pages answers everything at once, without positions.
                    if len(page) < self.page or "position" not in page[-1]:
                        break
                    params["after"] = page[-1]["position"]
        except requests.RequestException as e:
            self.error = str(e)
        self.seconds = time.monotonic() - started


@dataclass(frozen=True)
class Intake:
    seconds: float | None
    """From the output line saying the report is written to the job's end event."""
    said: list[str]
    """The job's `[ci]` lines after that line."""


def intake(db_path: Path, job_id: str) -> Intake:
    db = sqlite3.connect(db_path, timeout=10)
    try:
        rows = db.execute(
            "SELECT type, data, time FROM events WHERE job_id=? ORDER BY seq", (job_id,)
        ).fetchall()
    finally:
        db.close()
    written = next((n for n, (_, data, _) in enumerate(rows) if WRITTEN in data), None)
    end = next((t for kind, _, t in rows if kind == "end"), None)
    if written is None or end is None:
        return Intake(None, [])
    said = [
        json.loads(data)["text"]
        for kind, data, _ in rows[written + 1 :]
        if kind == "log" and json.loads(data)["stream"] == "system"
    ]
    span = datetime.fromisoformat(end) - datetime.fromisoformat(rows[written][2])
    return Intake(span.total_seconds(), said)


def children(pid: int) -> list[int]:
    """The processes `pid` started (the server's report reader), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def probe(url: str) -> HealthProbe:
    health = HealthProbe(url)
    health.interval = HEALTH_EVERY_SECONDS
    health.start()
    return health


def run(options: argparse.Namespace, workdir: Path) -> int:
    check_docker(options.image, os.environ.get("CI_DOCKER_HOST") or None)
    env = server_env(workdir, options.image, {"CI_MAX_CONCURRENT_JOBS": "1", "CI_AUTH": "off"})
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env)
    try:
        server.start()
        assert server.process is not None
        pid = server.process.pid
        idle_kib = proc_status_kib(pid, "VmRSS")
        archive = workdir / "project.zip"
        build_archive(write_project(workdir / "project", options.cases), archive)
        client = CIClient(server.url)
        idle = probe(server.url)
        time.sleep(IDLE_SECONDS)
        idle.stop()
        sampler = RssSampler(pid)
        sampler.start()
        during_job = probe(server.url)
        job_id = str(client.submit(archive)["job_id"])
        job = wait_until_finished(server, job_id, time.monotonic() + 900)
        during_job.stop()
        sampler.stop()
        hwm_kib = proc_status_kib(pid, "VmHWM")
        reader_kib = [proc_status_kib(child, "VmHWM") for child in children(pid)]

        url = f"{server.url}/jobs/{job_id}/tests"
        fetchers = [Fetcher(url, options.page, server.headers) for _ in range(options.fetchers)]
        during_pages = probe(server.url)
        for fetcher in fetchers:
            fetcher.thread.start()
        for fetcher in fetchers:
            fetcher.thread.join(600)
        during_pages.stop()
        show_started = time.monotonic()
        failures = sum(1 for _ in client.test_results(job_id, outcomes=("failed", "error")))
        show_seconds = time.monotonic() - show_started
        after_kib = proc_status_kib(pid, "VmRSS")
    finally:
        server.stop()
        remove_leftover_containers(server.db_path, os.environ.get("CI_DOCKER_HOST") or None)

    summary = job.get("summary") or {}
    taken = intake(server.db_path, job_id)
    rows = [
        ("cpu cores (os.cpu_count)", str(os.cpu_count())),
        ("1-min load average at the end", f"{os.getloadavg()[0]:.2f}"),
        ("test cases in the report", f"{options.cases:,}"),
        ("job status", f"{job['status']} (exit {job.get('exit_code')})"),
        (
            "summary: failed / total / results kept",
            f"{summary.get('failed')} / {summary.get('total')} / {summary.get('results_kept')}",
        ),
        ("intake: report written -> job end", seconds(taken.seconds)),
        *(("the job's log says", line) for line in taken.said),
        ("server RSS idle", mib(idle_kib)),
        ("server RSS peak during the job (VmRSS)", mib(sampler.peak_kib or None)),
        ("server VmHWM", mib(hwm_kib)),
        ("server RSS after the pages", mib(after_kib)),
        ("its child processes' VmHWM (the report reader)", ", ".join(map(mib, reader_kib))),
        ("GET /health idle, before the job (p50 / p99 / max)", idle.summary()),
        ("GET /health during the job (p50 / p99 / max)", during_job.summary()),
        (f"clients fetching every page of {options.page}", str(options.fetchers)),
        (
            "pages per client, results",
            ", ".join(sorted({f"{f.pages}, {f.results:,}" for f in fetchers})),
        ),
        ("largest page", f"{max(f.largest for f in fetchers) / 1024:,.0f} KiB"),
        ("time for every page (slowest client)", seconds(max(f.seconds for f in fetchers))),
        ("GET /health during the pages (p50 / p99 / max)", during_pages.summary()),
        ("ci show's failures: count, time", f"{failures:,}, {show_seconds:.2f} s"),
    ]
    print_table(rows)
    for fetcher in fetchers:
        if fetcher.error:
            print(f"a client failed: {fetcher.error}", file=sys.stderr)
    return 0 if job["status"] == "succeeded" and not any(f.error for f in fetchers) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=605_780)
    parser.add_argument("--fetchers", type=int, default=3)
    parser.add_argument("--page", type=int, default=500, help="the `limit` of each page")
    parser.add_argument("--image", default=os.environ.get("CI_RUNNER_IMAGE", DEFAULT_IMAGE))
    options = parser.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="ci-bench-reports-") as workdir:
            return run(options, Path(workdir))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
