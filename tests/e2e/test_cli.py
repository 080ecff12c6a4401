"""End to end: the real `ci` command against real `ci-server` processes running real Docker.

Each test checks what a user would: the exit code, the test log on stdout, the job's
messages on stderr, and what the server says about the job.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pytest
import requests

from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import (
    ServerProcess,
    free_port,
    run_ci,
    start_ci,
    wait_for,
)
from tests.e2e.test_lifecycle import job_log, log_lines

ProjectFactory = Callable[[str], Path]

JOB_ID = r"[0-9a-f]{12}"
SUBMITTED = re.compile(rf"^Job ({JOB_ID}) submitted\..*\bci wait \1$")
ASYNC_SUBMITTED = re.compile(rf"^Job submitted: ({JOB_ID})$")
SENT = re.compile(
    r"^Sent ([\d,]+) of ([\d,]+) files \(([\d.]+) (B|KB|MB|GB) of ([\d.]+) (B|KB|MB|GB)\) to "
)
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

PASSING_TESTS = ("test_add", "test_multiply", "test_prints_something")
SLOW_TESTS = ("test_first", "test_second", "test_third")
LIVE_TIMEOUT = 180.0
"""Generous: the machine may be loaded, and a job starts a container and runs pip."""


# -- helpers -------------------------------------------------------------------------------


def passed_line(path: str, test: str) -> re.Pattern[str]:
    """A test's line in pytest -v's output."""
    return re.compile(rf"^{re.escape(path)}::{test} PASSED\b", re.MULTILINE)


def progress_line(path: str, dots: str) -> re.Pattern[str]:
    """A file's line in pytest's default output: a character per test, then the percentage."""
    return re.compile(rf"^{re.escape(path)} {re.escape(dots)} +\[100%\]$", re.MULTILINE)


def job_id_from_submit(stderr: str) -> str:
    """The job id of the `Job <id> submitted. ... ci wait <id>` line."""
    for line in stderr.splitlines():
        match = SUBMITTED.match(line)
        if match:
            return match.group(1)
    raise AssertionError(f"no `Job <id> submitted` line in stderr:\n{stderr}")


def outcome_pattern(job_id: str, status: str) -> re.Pattern[str]:
    return re.compile(rf"^Job {job_id} {status}\b")


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def describe(result: subprocess.CompletedProcess[str]) -> str:
    return (
        f"exit code {result.returncode}\n--- stdout:\n{result.stdout}\n--- stderr:\n{result.stderr}"
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit code 2, one `ci: error:` line at the end of stderr, no traceback; its text."""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    errors = [line for line in result.stderr.splitlines() if line.startswith("ci: error: ")]
    assert len(errors) == 1, describe(result)
    assert last_line(result.stderr) == errors[0], describe(result)
    for fragment in fragments:
        assert fragment in errors[0], describe(result)
    return errors[0]


def upload_size(stderr: str) -> tuple[int, float]:
    """(the project's files, their bytes) from the `Sent N of M files (...)` line."""
    for line in stderr.splitlines():
        match = SENT.match(line)
        if match:
            return int(match.group(2).replace(",", "")), float(match.group(5)) * UNITS[
                match.group(6)
            ]
    raise AssertionError(f"no `Sent N of M files` line in stderr:\n{stderr}")


class LineReader:
    """Reads a pipe line by line in a thread, so that the test can wait with a deadline."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: re.Pattern[str], *, timeout: float) -> re.Match[str]:
        """Block until a line matches; fail at the deadline or when the stream ends first."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern.pattern!r} in {timeout}s")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)  # stays at the end for the next reader
                raise AssertionError(
                    f"the stream ended with no line matching {pattern.pattern!r}:\n"
                    + "\n".join(self.lines)
                )
            self.lines.append(line)
            match = pattern.search(line)
            if match:
                return match

    def rest(self, *, timeout: float) -> str:
        """Everything read so far and up to the end of the stream."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the stream did not end in {timeout}s"
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return "\n".join(self.lines)


@dataclass
class Submitted:
    job_id: str
    result: subprocess.CompletedProcess[str]


def submit(project: Path, server: ServerProcess, *args: str) -> Submitted:
    result = run_ci("submit", "test", *args, cwd=project, server=server)
    return Submitted(job_id_from_submit(result.stderr), result)


def submit_async(project: Path, server: ServerProcess) -> str:
    result = run_ci("submit", "test", "--async", cwd=project, server=server)
    assert result.returncode == 0, describe(result)
    match = ASYNC_SUBMITTED.match(result.stdout.strip())
    assert match, describe(result)
    return match.group(1)


@pytest.fixture
def foreign_http_server(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server that is not a CI server, on a free port."""
    port = free_port()
    root = tmp_path / "www"
    root.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError("python -m http.server exited at start-up")
        try:
            return requests.get(url, timeout=1).ok
        except requests.RequestException:
            return False

    try:
        wait_for(answers, timeout=30, what="python -m http.server to answer")
        yield url
    finally:
        process.terminate()
        process.wait(30)


# -- running a project -------------------------------------------------------------------


@pytest.mark.docker
def test_passing_project_exits_0_and_shows_pytest_s_own_output(
    server: ServerProcess, project: ProjectFactory
) -> None:
    run = submit(project("passing"), server)

    assert run.result.returncode == 0, describe(run.result)
    # pytest's default verbosity: a dot per test, not a line (`-v` is the user's choice).
    assert progress_line("tests/test_calc.py", "...").search(run.result.stdout), describe(
        run.result
    )
    assert "PASSED" not in run.result.stdout, describe(run.result)
    assert re.search(r"^=+ 3 passed in ", run.result.stdout, re.M), describe(run.result)
    stderr = run.result.stderr.strip().splitlines()
    # The job id and how to reattach come first, before anything about the job's progress.
    assert SENT.match(stderr[0]), describe(run.result)
    assert SUBMITTED.match(stderr[1]), describe(run.result)
    assert outcome_pattern(run.job_id, "succeeded").match(stderr[-1]), describe(run.result)
    job = server.job(run.job_id)
    assert (job["status"], job["success"]) == ("succeeded", True)


@pytest.mark.docker
def test_a_line_per_test_when_the_user_asks_pytest_for_it(
    server: ServerProcess, project: ProjectFactory
) -> None:
    run = submit(project("passing"), server, "--", "-v")

    assert run.result.returncode == 0, describe(run.result)
    for test in PASSING_TESTS:
        assert passed_line("tests/test_calc.py", test).search(run.result.stdout), describe(
            run.result
        )


@pytest.mark.docker
def test_a_burst_of_output_reaches_the_terminal_line_by_line(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Lines that come out together travel in one event: `ci` prints each on its own."""
    project = tmp_path / "burst"
    (project / "tests").mkdir(parents=True)
    (project / "requirements.txt").write_text("pytest\n")
    (project / "pytest.ini").write_text("[pytest]\naddopts = -s\n")
    (project / "tests" / "test_burst.py").write_text(
        "def test_burst():\n"
        "    print()\n"
        "    print('\\n'.join(f'burst line {n}' for n in range(20000)), flush=True)\n"
    )
    run = submit(project, server)

    assert run.result.returncode == 0, describe(run.result)
    printed = re.findall(r"^burst line (\d+)$", run.result.stdout, re.M)
    assert printed == [str(n) for n in range(20000)], describe(run.result)
    log = server.get(f"/jobs/{run.job_id}/events", params={"after": 0}).text
    assert log.count("event: log") < 1000, "one event per line"


@pytest.mark.docker
def test_failing_project_exits_1_and_shows_the_assertion_message(
    server: ServerProcess, project: ProjectFactory
) -> None:
    run = submit(project("failing"), server)

    assert run.result.returncode == 1, describe(run.result)
    assert "subtract(5, 3) should be 2 but was -2" in run.result.stdout, describe(run.result)
    assert progress_line("tests/test_calc.py", "..F").search(run.result.stdout)
    assert re.search(r"^FAILED tests/test_calc.py::test_subtract\b", run.result.stdout, re.M)
    # pytest printed colour (the dashboard shows it); `ci` on a pipe prints none of it.
    assert "\x1b[" not in run.result.stdout + run.result.stderr, describe(run.result)
    stored = "\n".join(log_lines(job_log(server, run.job_id)))
    assert re.search(r"\x1b\[[0-9;]*mFAILED", stored), stored
    assert outcome_pattern(run.job_id, "failed").match(last_line(run.result.stderr)), describe(
        run.result
    )
    assert server.job(run.job_id)["success"] is False


@pytest.mark.docker
def test_syntax_error_exits_1_and_shows_the_syntax_error(
    server: ServerProcess, project: ProjectFactory
) -> None:
    run = submit(project("syntax_error"), server)

    assert run.result.returncode == 1, describe(run.result)
    assert "SyntaxError" in run.result.stdout, describe(run.result)
    assert "test_broken.py" in run.result.stdout, describe(run.result)
    assert outcome_pattern(run.job_id, "failed").match(last_line(run.result.stderr)), describe(
        run.result
    )


@pytest.mark.docker
def test_project_without_requirements_exits_1_and_says_why(
    server: ServerProcess, project: ProjectFactory
) -> None:
    run = submit(project("no_requirements"), server)

    assert run.result.returncode == 1, describe(run.result)
    explained = [
        line
        for line in run.result.stderr.splitlines()
        if line.startswith("[ci] ") and "requirements.txt" in line
    ]
    assert explained, describe(run.result)
    assert outcome_pattern(run.job_id, "failed").match(last_line(run.result.stderr)), describe(
        run.result
    )
    assert "PASSED" not in run.result.stdout, describe(run.result)


@pytest.mark.docker
def test_output_streams_live_while_the_job_runs(
    server: ServerProcess, project: ProjectFactory
) -> None:
    process = start_ci("submit", "test", cwd=project("slow"), server=server)
    assert process.stdout is not None
    assert process.stderr is not None
    stdout = LineReader(process.stdout)
    stderr = LineReader(process.stderr)
    try:
        job_id = stderr.wait_for_line(SUBMITTED, timeout=LIVE_TIMEOUT).group(1)
        stdout.wait_for_line(passed_line("tests/test_slow.py", "test_first"), timeout=LIVE_TIMEOUT)
        first_seen = time.monotonic()
        # The first result is on the terminal while the other two tests still sleep.
        job = server.job(job_id)
        assert job["status"] == "running", job
        assert job["end_time"] is None, job

        stdout.wait_for_line(passed_line("tests/test_slow.py", "test_third"), timeout=LIVE_TIMEOUT)
        # Two one-second tests ran in between: the lines came as printed, not in one burst.
        assert time.monotonic() - first_seen > 1.0
        assert process.wait(LIVE_TIMEOUT) == 0, stderr.rest(timeout=10)
        log = stdout.rest(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert passed_line("tests/test_slow.py", "test_second").search(log), log
    assert server.job(job_id)["status"] == "succeeded"


# -- following and listing jobs -----------------------------------------------------------


@pytest.mark.docker
def test_async_submit_then_wait_and_list(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    slow = submit_async(project("slow"), server)
    # It returned at once: the job has not even finished.
    assert server.job(slow)["status"] in ("queued", "running")

    waited = run_ci("wait", slow, cwd=tmp_path, server=server)
    assert waited.returncode == 0, describe(waited)
    assert outcome_pattern(slow, "succeeded").match(last_line(waited.stderr)), describe(waited)

    replay = run_ci("wait", "--all", slow, cwd=tmp_path, server=server)
    assert replay.returncode == 0, describe(replay)
    for test in SLOW_TESTS:
        assert passed_line("tests/test_slow.py", test).search(replay.stdout), describe(replay)
    assert outcome_pattern(slow, "succeeded").match(last_line(replay.stderr)), describe(replay)

    again = run_ci("wait", slow, cwd=tmp_path, server=server, timeout=30)
    assert again.returncode == 0, describe(again)
    assert again.stdout == "", describe(again)  # no replay: just how it ended
    assert outcome_pattern(slow, "succeeded").match(again.stderr.strip()), describe(again)
    assert len(again.stderr.strip().splitlines()) == 1, describe(again)

    failing = submit_async(project("failing"), server)
    waited = run_ci("wait", failing, cwd=tmp_path, server=server)
    assert waited.returncode == 1, describe(waited)
    assert outcome_pattern(failing, "failed").match(last_line(waited.stderr)), describe(waited)

    listed = run_ci("list", "--json", cwd=tmp_path, server=server, timeout=30)
    assert listed.returncode == 0, describe(listed)
    jobs: list[dict[str, Any]] = json.loads(listed.stdout)
    assert isinstance(jobs, list)
    assert [job["job_id"] for job in jobs] == [failing, slow]  # newest first
    expected = {slow: ("succeeded", True, "slow"), failing: ("failed", False, "failing")}
    for job in jobs:  # each named after its folder: the fixtures have no packaging metadata
        assert (job["status"], job["success"], job["project"]) == expected[job["job_id"]], job
        start = datetime.fromisoformat(job["start_time"])
        end = datetime.fromisoformat(job["end_time"])
        assert start.tzinfo is not None, job
        assert end.tzinfo is not None, job
        assert start <= end, job

    table = run_ci("list", cwd=tmp_path, server=server, timeout=30)
    assert table.returncode == 0, describe(table)
    rows = table.stdout.strip().splitlines()
    assert rows[0].split()[:4] == ["JOB", "ID", "PROJECT", "STATUS"], describe(table)
    assert [row.split()[:3] for row in rows[1:]] == [
        [failing, "failing", "failed"],
        [slow, "slow", "succeeded"],
    ], describe(table)

    only = run_ci("list", "--project", "slow", cwd=tmp_path, server=server, timeout=30)
    assert only.returncode == 0, describe(only)
    assert [row.split()[0] for row in only.stdout.strip().splitlines()[1:]] == [slow]
    none = run_ci("list", "--project", "nothing", cwd=tmp_path, server=server, timeout=30)
    assert (none.returncode, none.stdout) == (0, ""), describe(none)
    assert "No jobs of project 'nothing'" in none.stderr, describe(none)


@pytest.mark.docker
def test_a_project_is_named_by_its_ci_toml_or_by_the_user(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    passing = project("passing")
    (passing / "ci.toml").write_text('project = "calc"\n')
    named = run_ci("submit", "test", cwd=passing, server=server)
    assert named.returncode == 0, describe(named)
    chosen = run_ci("submit", "test", "--project", "shop front", cwd=passing, server=server)
    assert chosen.returncode == 0, describe(chosen)
    calc, shop = job_id_from_submit(named.stderr), job_id_from_submit(chosen.stderr)

    shown = run_ci("show", shop, cwd=tmp_path, server=server, timeout=30)
    assert shown.returncode == 0, describe(shown)
    assert "\n  project   shop front\n" in shown.stdout, describe(shown)
    listed = run_ci("list", "--json", "--project", "calc", cwd=tmp_path, server=server, timeout=30)
    assert listed.returncode == 0, describe(listed)
    assert [(job["job_id"], job["project"]) for job in json.loads(listed.stdout)] == [
        (calc, "calc")
    ]


@pytest.mark.docker
def test_jobs_and_logs_survive_a_server_restart(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    first = make_server()
    passing = project("passing")
    run = submit(passing, first)
    assert run.result.returncode == 0, describe(run.result)
    before = run_ci("wait", "--all", run.job_id, cwd=passing, server=first)
    assert before.returncode == 0, describe(before)
    assert before.stdout == run.result.stdout

    first_job = first.job(run.job_id)
    first.stop()
    assert first.process is not None
    # Stopped on its own (uvicorn ends by re-raising SIGTERM), not killed after the grace time.
    assert first.process.returncode in (0, -signal.SIGTERM), first.log()
    second = make_server()
    assert second.db_path == first.db_path

    listed = run_ci("list", "--json", cwd=passing, server=second, timeout=30)
    assert listed.returncode == 0, describe(listed)
    [job] = json.loads(listed.stdout)
    assert (job["job_id"], job["status"], job["success"]) == (run.job_id, "succeeded", True)
    assert job["start_time"] == first_job["start_time"], job
    assert job["end_time"] == first_job["end_time"], job
    assert datetime.fromisoformat(job["end_time"]).tzinfo is not None, job
    after = run_ci("wait", "--all", run.job_id, cwd=passing, server=second)
    assert after.returncode == 0, describe(after)
    assert after.stdout == before.stdout
    assert progress_line("tests/test_calc.py", "...").search(after.stdout), describe(after)
    assert outcome_pattern(run.job_id, "succeeded").match(last_line(after.stderr))


@pytest.mark.docker
def test_upload_leaves_out_what_gitignore_ignores(
    server: ServerProcess, project: ProjectFactory
) -> None:
    passing = project("passing")
    caches = {"__pycache__", ".pytest_cache"}  # left by running the fixture's tests locally
    sources = [p for p in passing.rglob("*") if p.is_file() and not caches & set(p.parts)]
    sent_files = len(sources) + 1  # and the .gitignore
    (passing / ".gitignore").write_text("big/\n")
    (passing / "big").mkdir()
    with (passing / "big" / "data.bin").open("wb") as data:  # 100 MB, sparse: made at once
        data.truncate(100 * 1024**2)

    run = submit(passing, server)

    assert run.result.returncode == 0, describe(run.result)
    files, size = upload_size(run.result.stderr)
    assert files == sent_files, describe(run.result)
    assert size < 100 * 1024, describe(run.result)


# -- usage and connection errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "args", [("list",), ("wait", "0123456789ab"), ("cancel", "0123456789ab"), ("submit", "test")]
)
def test_no_server_is_a_usage_error(args: tuple[str, ...], project: ProjectFactory) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = run_ci(*args, cwd=project("passing"), server=url, timeout=60)
    assert_usage_error(result, "cannot reach the CI server", url)


@pytest.mark.parametrize("args", [("list",), ("wait", "0123456789ab"), ("submit", "test")])
def test_a_server_that_is_not_ours_is_a_usage_error(
    args: tuple[str, ...], foreign_http_server: str, project: ProjectFactory
) -> None:
    result = run_ci(*args, cwd=project("passing"), server=foreign_http_server, timeout=60)
    assert_usage_error(result, "does not look like a CI server")


@pytest.mark.docker
def test_a_wrong_path_prefix_is_a_usage_error(
    server: ServerProcess, project: ProjectFactory
) -> None:
    url = f"{server.url}/ci"
    passing = project("passing")
    for args in (("list",), ("wait", "0123456789ab"), ("submit", "test")):
        result = run_ci(*args, cwd=passing, server=url, timeout=60)
        assert_usage_error(result, "does not look like a CI server")
    assert server.get("/jobs").json() == []  # nothing was submitted


@pytest.mark.docker
@pytest.mark.parametrize(
    "args",
    [
        ("wait", "000000000000"),
        ("wait", "--all", "000000000000"),
        ("cancel", "000000000000"),
        ("wait", "nope"),
        ("cancel", "nope"),
    ],
)
def test_an_unknown_or_malformed_job_id_is_a_usage_error(
    args: tuple[str, ...], server: ServerProcess, tmp_path: Path
) -> None:
    result = run_ci(*args, cwd=tmp_path, server=server, timeout=60)
    assert_usage_error(result, f"no job with id {args[-1]!r}")


def test_a_directory_that_is_no_project_is_a_usage_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    # No server is needed to tell: the check happens before any upload.
    url = f"http://127.0.0.1:{free_port()}"
    result = run_ci("submit", "test", cwd=empty, server=url, timeout=60)
    assert_usage_error(result, "project root")
    assert "Sent" not in result.stderr
