"""Dashboard benchmark: how long a finished 100,000-line job's page takes to become usable.

    python bench/dashboard.py [--lines 100000] [--runs 5]

It writes a job with --lines lines of output (pytest-like, some in colour), its END and 200
test results (5 failed, with tracebacks) into a new SQLite database, as a worker would have,
starts a real `ci-server --no-worker` on it and drives Debian's chromium (/usr/bin/chromium,
through Playwright), signed in. For each run, a fresh page opens the job and is timed until
it is usable: the details and failures shown and the log's last line on screen; then a click
on "Load earlier lines" until the earlier lines are in the page. It prints medians and
maxima, the size of the page's HTML, and how many log lines the page holds.

It exits 0 when every run became usable, 1 otherwise, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.event_ingest import print_table  # noqa: E402
from ci_server import accounts  # noqa: E402
from ci_server.events import end_event_data  # noqa: E402
from ci_server.models import (  # noqa: E402
    EventType,
    Job,
    JobEvent,
    JobStatus,
    TestOutcome,
    TestResult,
    TestSummary,
    new_job_id,
    utcnow,
)
from ci_server.store.sqlite import SqliteStore  # noqa: E402
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.e2e.harness import free_port, wait_for  # noqa: E402

WRITE_BATCH = 5000
FOLLOWING_THE_END = """() => {
  const log = document.getElementById("log-lines");
  return log.scrollHeight - log.scrollTop - log.clientHeight < 24;
}"""


def output_line(n: int) -> str:
    if n % 10 == 0:
        return f"tests/test_many.py::test_{n} \x1b[32mPASSED\x1b[0m [{n % 100:3d}%]"
    return f"line {n}: some output of a test, about sixty characters long..."


async def write_job(db_path: Path, lines: int) -> tuple[str, str]:
    """The job's id and an admin's key."""
    async with SqliteStore(db_path) as store:
        await accounts.create_user(store, name="bench", email="bench@example.com", is_admin=True)
        _, _, key = await accounts.create_key(store, email="bench@example.com", name="bench")
        job = Job(id=new_job_id(), owner_id=(await store.list_users())[0].id)
        await store.add_job(job)
        events = [JobEvent(job.id, 1, EventType.STATUS, {"status": "running"})]
        for n in range(1, lines + 1):
            events.append(
                JobEvent(job.id, n + 1, EventType.LOG, {"stream": "stdout", "text": output_line(n)})
            )
            if len(events) >= WRITE_BATCH:
                await store.append_events(events)
                events = []
        results = [
            TestResult(f"tests/test_many.py::test_{n}", TestOutcome.PASSED, 0.01, position=n)
            for n in range(195)
        ] + [
            TestResult(
                f"tests/test_many.py::test_fails_{n}",
                TestOutcome.FAILED,
                0.02,
                message=f"AssertionError: case {n}",
                details=f"def test_fails_{n}():\n>       assert {n} == -1\nE       AssertionError",
                position=195 + n,
            )
            for n in range(5)
        ]
        await store.set_test_results(job.id, results)
        started = utcnow()
        running = job.replace(status=JobStatus.RUNNING, started_at=started, worker="bench")
        await store.update_job(running, expected=JobStatus.QUEUED)
        ended = running.replace(
            status=JobStatus.FAILED,
            finished_at=utcnow(),
            exit_code=1,
            summary=TestSummary(passed=195, failed=5),
        )
        await store.update_job(ended, expected=JobStatus.RUNNING)
        events.append(JobEvent(job.id, lines + 2, EventType.END, end_event_data(ended)))
        await store.append_events(events)
    return job.id, key


def measure(url: str, key: str, job_id: str, lines: int, runs: int) -> list[tuple[str, str]]:
    from playwright.sync_api import expect, sync_playwright

    usable: list[float] = []
    earlier: list[float] = []
    held: list[int] = []
    last_line = re.sub(r"\x1b\[[0-9;]*m", "", output_line(lines))  # as shown: no escapes
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=url)
        context.set_default_timeout(60_000)
        page = context.new_page()
        page.goto("/sign-in")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/")
        for _ in range(runs):
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"/job/{job_id}")
            expect(page.locator("details.failure")).to_have_count(5)
            expect(page.locator("#log-lines .line").last).to_have_text("ended: failed, exit code 1")
            expect(page.get_by_text(last_line, exact=True)).to_be_visible()
            page.wait_for_function(FOLLOWING_THE_END)
            usable.append(time.perf_counter() - started)
            count = page.locator("#log-lines .line").count()
            started = time.perf_counter()
            page.get_by_role("button", name="Load earlier lines").click()
            expect(page.locator("#log-lines .line")).to_have_count(count + 2000)
            earlier.append(time.perf_counter() - started)
            held.append(page.locator("#log-lines .line").count())
            page.close()
        cookies = {cookie.get("name", ""): cookie.get("value", "") for cookie in context.cookies()}
        browser.close()
    html = requests.get(f"{url}/job/{job_id}", cookies=cookies, timeout=10)
    html.raise_for_status()
    return [
        ("log lines of the job", f"{lines:,}"),
        ("runs", str(runs)),
        ("page usable (median)", f"{statistics.median(usable):.3f} s"),
        ("page usable (max)", f"{max(usable):.3f} s"),
        ("2,000 earlier lines (median)", f"{statistics.median(earlier):.3f} s"),
        ("log lines in the page, then", str(max(held))),
        ("the page's HTML", f"{len(html.content) / 1024:.1f} KiB"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description="dashboard benchmark: a large log's page")
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"no browser at {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ci-bench-dashboard-") as folder:
        db_path = Path(folder) / "ci.db"
        started = time.perf_counter()
        job_id, key = asyncio.run(write_job(db_path, options.lines))
        print(
            f"wrote job {job_id}: {options.lines:,} lines in {time.perf_counter() - started:.1f} s"
        )
        port = free_port()
        env = os.environ | {"CI_DB_PATH": str(db_path), "PYTHONPATH": str(REPO_ROOT)}
        log = (Path(folder) / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "ci_server", "--port", str(port), "--no-worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _healthy(url, server), timeout=60, what="the server")
            rows = measure(url, key, job_id, options.lines, options.runs)
        finally:
            server.terminate()
            server.wait(30)
            log.close()
    print_table(rows)
    return 0


def _healthy(url: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise SystemExit("ci-server exited at start-up")
    try:
        return requests.get(f"{url}/health", timeout=1).ok
    except requests.RequestException:
        return False


if __name__ == "__main__":
    sys.exit(main())
