"""A job's life end to end: queueing, cancelling, Ctrl-C, timeouts, crash recovery, resuming.

Real `ci-server` processes, the real `ci` command and real Docker containers. Fixture projects:
`blocking` (passes after a few seconds), `hanging` (a test sleeping 300 s, printing
"hanging test started" first) and `noisy` (3000 numbered lines over a few seconds).
Nothing here sleeps to wait for a condition: every wait polls with a deadline or reads a
stream with a deadline.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from ci_server.settings import Settings
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, run_ci, start_ci, wait_for

pytestmark = pytest.mark.docker

ProjectFactory = Callable[[str], Path]
Event = dict[str, Any]

JOB_ID = re.compile(r"Job submitted: ([0-9a-f]{12})")
HANGING_STARTED = "hanging test started"
NOISY_LINES = 3000
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "error"})


# -- helpers ---------------------------------------------------------------------------------


def submit_async(project: Path, server: ServerProcess) -> str:
    result = run_ci("submit", "test", "--async", cwd=project, server=server)
    assert result.returncode == 0, result.stderr
    match = JOB_ID.search(result.stdout)
    assert match, f"no job id in: {result.stdout!r}"
    return match.group(1)


def containers_of(docker_client: docker.DockerClient, job_id: str) -> list[Any]:
    # sparse: no inspection of each container, which fails on one removed meanwhile.
    return docker_client.containers.list(
        all=True,
        sparse=True,
        filters={"name": job_id},  # named ci-<job id>
    )


def assert_no_container_left(docker_client: docker.DockerClient, job_id: str) -> None:
    wait_for(
        lambda: not containers_of(docker_client, job_id),
        timeout=60,
        what=f"the container of job {job_id} to be removed",
    )


def sse_events(
    response: requests.Response, *, deadline: float, what: str
) -> Iterator[tuple[str | None, Event]]:
    """Parse an SSE body into (id field, decoded data) pairs; fail past `deadline`.

    The server sends a keep-alive comment every 15 s, so a silent stream still wakes this
    loop to check the deadline.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    event_id: str | None = None
    data: list[str] = []
    for chunk in response.iter_content(chunk_size=None):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out reading the event stream, waiting for {what}")
        buffer += decoder.decode(chunk)
        *lines, buffer = buffer.split("\n")
        for raw in lines:
            line = raw.removesuffix("\r")
            if not line:
                if data:
                    yield event_id, json.loads("\n".join(data))
                event_id, data = None, []
            elif line.startswith(":"):
                continue  # a keep-alive comment
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    event_id = value
                elif name == "data":
                    data.append(value)


def read_events(
    server: ServerProcess,
    job_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    stop: Callable[[Event], bool] = lambda event: False,
    timeout: float = 120,
    what: str = "the end event",
) -> list[Event]:
    """Read the job's SSE stream until its `end` event, or until `stop(event)`, then hang up.

    Checks that every event's SSE `id` is its sequence number.
    """
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    with server.get(
        f"/jobs/{job_id}/events",
        headers={"Accept": "text/event-stream", **(headers or {})},
        params=params,
        stream=True,
        timeout=(5, 60),
    ) as response:
        response.raise_for_status()
        for event_id, event in sse_events(response, deadline=deadline, what=what):
            assert event_id == str(event["seq"]), f"SSE id {event_id!r} for event {event}"
            events.append(event)
            if event["type"] == "end" or stop(event):
                return events
    raise AssertionError(f"the event stream ended without an end event after {events[-1:]}")


def job_log(server: ServerProcess, job_id: str) -> list[Event]:
    """Every event of a finished job, from the start."""
    return read_events(server, job_id, params={"after": 0})


def log_lines(events: list[Event]) -> list[str]:
    """The lines of the log events: one event carries the lines that came together."""
    return [
        line for event in events if event["type"] == "log" for line in event["text"].split("\n")
    ]


def has_line(event: Event, line: str) -> bool:
    return event["type"] == "log" and line in event["text"].split("\n")


def wait_for_log_line(
    server: ServerProcess, job_id: str, text: str, timeout: float = 120
) -> list[Event]:
    """The job's events up to the first log line containing `text` (blocking read)."""
    events = read_events(
        server,
        job_id,
        params={"after": 0},
        stop=lambda event: event["type"] == "log" and text in event["text"],
        timeout=timeout,
        what=f"a log line with {text!r}",
    )
    assert events[-1]["type"] == "log", f"job {job_id} ended before printing {text!r}: {events}"
    return events


def stream_requests(server: ServerProcess, job_id: str) -> int:
    """How many times the job's event stream was opened (uvicorn logs each request's start)."""
    return server.log().count(f"/jobs/{job_id}/events")


def wait_attached(server: ServerProcess, job_id: str, before: int) -> None:
    """Until one more client than `before` has opened the job's event stream."""
    wait_for(
        lambda: stream_requests(server, job_id) > before,
        timeout=60,
        what=f"a client to follow job {job_id}",
    )


def stored_last_seq(db_path: Path, job_id: str) -> int:
    """The newest event of the job in the server's SQLite database (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT max(seq) FROM events WHERE job_id = ?", (job_id,)).fetchone()
    return row[0] or 0


def submit_hanging(server: ServerProcess, hanging: Path) -> tuple[str, list[Event]]:
    """Submit the hanging project; return once its test runs, with the job's events so far."""
    job_id = submit_async(hanging, server)
    seen = wait_for_log_line(server, job_id, HANGING_STARTED)
    assert server.job(job_id)["status"] == "running"
    return job_id, seen


def submitted_job_id(cli_stderr: str) -> str:
    """The id a synchronous `ci submit test` announces."""
    match = re.search(r"Job ([0-9a-f]{12}) submitted", cli_stderr)
    assert match, cli_stderr
    return match.group(1)


def cancel_and_check(
    server: ServerProcess, docker_client: docker.DockerClient, job_id: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`ci cancel <id>`: it succeeds, the job is cancelled and its container goes."""
    result = run_ci("cancel", job_id, cwd=cwd, server=server)
    assert result.returncode == 0, result.stderr
    assert server.job(job_id)["status"] == "cancelled"
    assert_no_container_left(docker_client, job_id)
    return result


class CIProcess:
    """A `ci` command running in the background, its output read line by line as it comes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(name, pipe), daemon=True)
            for name, pipe in (("stdout", process.stdout), ("stderr", process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    def _pump(self, name: str, pipe: Any) -> None:
        for line in pipe:
            with self._changed:
                self.lines[name].append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_output(self, text: str, *, stream: str = "stdout", timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines[stream]):
                remaining = deadline - time.monotonic()
                if self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise AssertionError(
                        f"`ci` exited ({self.process.returncode}) without printing {text!r}:\n"
                        f"{self.output()}"
                    )
                if remaining <= 0:
                    raise AssertionError(f"`ci` did not print {text!r} in {timeout}s")
                self._changed.wait(min(remaining, 1.0))

    def interrupt(self) -> None:
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 120) -> int:
        """Wait for the command to exit; its exit status."""
        returncode = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(10)
        return returncode

    @property
    def stdout(self) -> str:
        return "".join(self.lines["stdout"])

    @property
    def stderr(self) -> str:
        return "".join(self.lines["stderr"])

    def output(self) -> str:
        return f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


CIStarter = Callable[..., CIProcess]


def start_watcher(start_cli: CIStarter, server: ServerProcess, job_id: str, cwd: Path) -> CIProcess:
    """`ci wait <id>`, returned once it follows the job's live events."""
    opened = stream_requests(server, job_id)
    watcher = start_cli("wait", job_id, cwd=cwd, server=server)
    wait_attached(server, job_id, opened)
    return watcher


@pytest.fixture
def start_cli() -> Iterator[CIStarter]:
    """`start_cli(*args, cwd=..., server=...)`; whatever still runs at the end is killed."""
    started: list[CIProcess] = []

    def start(*args: str, cwd: Path, server: ServerProcess) -> CIProcess:
        cli = CIProcess(start_ci(*args, cwd=cwd, server=server))
        started.append(cli)
        return cli

    yield start
    for cli in started:
        cli.stop()


@pytest.fixture(autouse=True)
def _no_stray_containers(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[None]:
    """After the test (and its servers), remove what a failed test may have left running."""
    yield
    instance = Settings(db_path=tmp_path / "ci.db").instance_id
    for container in docker_client.containers.list(
        all=True, sparse=True, filters={"label": f"ci.instance={instance}"}
    ):
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


class StatusRecorder:
    """Polls GET /jobs in a thread, keeping every snapshot of the statuses."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.snapshots: list[dict[str, str]] = []
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.server.get("/jobs")
                response.raise_for_status()
            except requests.RequestException as e:
                self.errors.append(e)
            else:
                self.snapshots.append({job["job_id"]: job["status"] for job in response.json()})
            self._stop.wait(0.05)

    def __enter__(self) -> StatusRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)


# -- 1. the queue ----------------------------------------------------------------------------


def test_jobs_beyond_the_limit_wait_in_order_and_never_run_together(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    server = make_server(CI_MAX_CONCURRENT_JOBS="1")
    blocking = project("blocking")

    with StatusRecorder(server) as recorder:
        job_ids = [submit_async(blocking, server) for _ in range(3)]

        def one_running_two_queued() -> list[dict[str, Any]] | None:
            result = run_ci("list", "--json", cwd=blocking, server=server)
            assert result.returncode == 0, result.stderr
            jobs = {job["job_id"]: job for job in json.loads(result.stdout)}
            listed = [jobs[job_id] for job_id in job_ids]
            if [job["status"] for job in listed] == ["running", "queued", "queued"]:
                return listed
            return None

        first, second, third = wait_for(
            one_running_two_queued, timeout=60, what="one job running and two queued"
        )
        assert first["queue_position"] is None
        assert (second["queue_position"], third["queue_position"]) == (1, 2)

        finished = [server.wait_for_status(job_id, *TERMINAL, timeout=240) for job_id in job_ids]
    assert [job["status"] for job in finished] == ["succeeded"] * 3, finished

    # Never two at once: in any snapshot of the list, and in the recorded run times.
    assert recorder.snapshots
    assert not recorder.errors
    for snapshot in recorder.snapshots:
        running = [job_id for job_id in job_ids if snapshot.get(job_id) == "running"]
        assert len(running) <= 1, snapshot
    ran = {
        job_id
        for snapshot in recorder.snapshots
        for job_id, st in snapshot.items()
        if st == "running"
    }
    assert ran == set(job_ids)
    for earlier, later in itertools.pairwise(finished):
        ended, started = (
            datetime.fromisoformat(earlier["end_time"]),
            datetime.fromisoformat(later["start_time"]),
        )
        assert ended <= started, (earlier, later)


# -- 2. cancelling with `ci cancel` ----------------------------------------------------------


def test_cancel_a_running_job(
    make_server: ServerFactory,
    project: ProjectFactory,
    docker_client: docker.DockerClient,
    start_cli: CIStarter,
) -> None:
    server = make_server()
    hanging = project("hanging")
    job_id, _ = submit_hanging(server, hanging)
    assert len(containers_of(docker_client, job_id)) == 1
    watcher = start_watcher(start_cli, server, job_id, hanging)

    cancel = cancel_and_check(server, docker_client, job_id, hanging)
    assert f"Job {job_id} cancelled" in cancel.stderr
    assert server.job(job_id)["success"] is False
    assert watcher.finish() == 1, watcher.output()
    assert f"Job {job_id} cancelled" in watcher.stderr

    again = run_ci("cancel", job_id, cwd=hanging, server=server)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    assert server.job(job_id)["status"] == "cancelled"

    events = job_log(server, job_id)
    assert events[-1]["type"] == "end"
    assert events[-1]["status"] == "cancelled"


def test_cancel_a_queued_job(
    make_server: ServerFactory, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    server = make_server(CI_MAX_CONCURRENT_JOBS="1")
    hanging = project("hanging")
    running_id, _ = submit_hanging(server, hanging)
    queued_id = submit_async(hanging, server)
    queued = server.job(queued_id)
    assert queued["status"] == "queued"
    assert queued["queue_position"] == 1

    cancel_and_check(server, docker_client, queued_id, hanging)
    job = server.job(queued_id)
    assert job["start_time"] is None  # it never ran
    assert job["queue_position"] is None
    log = [(event["type"], event.get("status")) for event in job_log(server, queued_id)]
    assert log == [("status", "queued"), ("end", "cancelled")]

    # The running one is untouched; cancel it too, then nothing is left.
    assert server.job(running_id)["status"] == "running"
    cancel_and_check(server, docker_client, running_id, hanging)
    assert server.job(queued_id)["start_time"] is None


# -- 3. Ctrl-C -------------------------------------------------------------------------------


def test_ctrl_c_during_submit_cancels_the_job(
    make_server: ServerFactory,
    project: ProjectFactory,
    docker_client: docker.DockerClient,
    start_cli: CIStarter,
) -> None:
    server = make_server()
    hanging = project("hanging")
    cli = start_cli("submit", "test", cwd=hanging, server=server)
    # Its output shows the job runs and that `ci` follows it (Ctrl-C then means "cancel").
    cli.wait_for_output(HANGING_STARTED)
    job_id = submitted_job_id(cli.stderr)
    assert server.job(job_id)["status"] == "running"

    cli.interrupt()
    assert cli.finish() == 130, cli.output()
    assert "cancelling" in cli.stderr

    assert server.job(job_id)["status"] == "cancelled"
    assert_no_container_left(docker_client, job_id)


def test_ctrl_c_during_wait_only_detaches(
    make_server: ServerFactory,
    project: ProjectFactory,
    docker_client: docker.DockerClient,
    start_cli: CIStarter,
) -> None:
    server = make_server()
    hanging = project("hanging")
    job_id, _ = submit_hanging(server, hanging)
    watcher = start_watcher(start_cli, server, job_id, hanging)
    watcher.interrupt()
    assert watcher.finish() == 130, watcher.output()
    assert "Detached" in watcher.stderr

    assert server.job(job_id)["status"] == "running"
    assert len(containers_of(docker_client, job_id)) == 1
    cancel_and_check(server, docker_client, job_id, hanging)  # clean up


# -- 4. timeouts -----------------------------------------------------------------------------


def test_a_job_past_its_timeout_is_stopped(
    make_server: ServerFactory, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    server = make_server()
    hanging = project("hanging")
    result = run_ci("submit", "test", "--timeout", "5", cwd=hanging, server=server)

    assert result.returncode == 1, result.stderr
    assert "timed out" in result.stderr
    job_id = submitted_job_id(result.stderr)
    job = server.job(job_id)
    assert job["status"] == "timed_out"
    assert job["success"] is False
    assert "timed out after 5s" in (job["reason"] or "")
    assert_no_container_left(docker_client, job_id)


# -- 5. crash recovery -----------------------------------------------------------------------


def test_a_server_crash_ends_running_jobs_and_keeps_queued_ones(
    make_server: ServerFactory, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    server = make_server(CI_MAX_CONCURRENT_JOBS="1")
    hanging = project("hanging")
    blocking = project("blocking")
    running_id, seen = submit_hanging(server, hanging)
    assert any("test session starts" in text for text in log_lines(seen)), seen
    queued_id = submit_async(blocking, server)
    assert server.job(queued_id)["status"] == "queued"
    assert len(containers_of(docker_client, running_id)) == 1
    # Events reach the database in batches (every 0.2 s): a crash loses the last batch by
    # design. Crash once what was seen is written, to test recovery rather than batching.
    wait_for(
        lambda: (
            stored_last_seq(server.db_path, running_id) >= seen[-1]["seq"]
            and stored_last_seq(server.db_path, queued_id) >= 1
        ),
        timeout=30,
        what="the events seen so far to be written to the database",
    )

    server.kill()
    restarted = make_server(CI_MAX_CONCURRENT_JOBS="1")
    assert restarted.db_path == server.db_path

    crashed = restarted.job(running_id)
    assert crashed["status"] == "error"
    assert crashed["reason"] == "interrupted by server restart"
    assert crashed["success"] is False
    assert_no_container_left(docker_client, running_id)

    # The log kept what was streamed before the crash, then says how the job ended.
    log = job_log(restarted, running_id)
    assert [(e["seq"], e["type"], e.get("text")) for e in log[: len(seen)]] == [
        (e["seq"], e["type"], e.get("text")) for e in seen
    ]
    tail = log[len(seen) :]
    assert tail[-1]["type"] == "end"
    assert tail[-1]["status"] == "error"
    assert tail[-1]["reason"] == "interrupted by server restart"
    assert "interrupted by server restart" in log_lines(tail)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))

    finished = restarted.wait_for_status(queued_id, *TERMINAL, timeout=180)
    assert finished["status"] == "succeeded", finished
    assert_no_container_left(docker_client, queued_id)


def test_ci_wait_follows_a_job_across_a_server_crash(
    make_server: ServerFactory, project: ProjectFactory, start_cli: CIStarter
) -> None:
    """A watcher that saw events the crash lost (not yet written) still gets the end."""
    server = make_server()
    noisy = project("noisy")
    job_id = submit_async(noisy, server)
    watcher = start_cli("wait", job_id, "--all", cwd=noisy, server=server)
    watcher.wait_for_output("line 1500")
    server.kill()  # mid-output: the newest events are most likely not written yet

    # Same database, same address: the watcher reconnects by itself.
    restarted = ServerProcess(
        db_path=server.db_path, env=server.env, port=server.port, api_key=server.api_key
    )
    try:
        restarted.start()
        assert watcher.finish(timeout=90) == 1, watcher.output()
        assert f"Job {job_id} error" in watcher.stderr
        assert "interrupted by server restart" in watcher.stderr
        seen = [int(n) for n in re.findall(r"^line (\d+)$", watcher.stdout, re.MULTILINE)]
        assert seen == list(range(len(seen)))
        assert len(seen) > 1500

        # A client resuming from any event it saw gets the end event, never an empty stream.
        log = job_log(restarted, job_id)
        assert [event["seq"] for event in log] == list(range(1, len(log) + 1))
        for resume_after in (log[-3]["seq"], log[-1]["seq"], log[-1]["seq"] + 500):
            events = read_events(restarted, job_id, headers={"Last-Event-ID": str(resume_after)})
            assert events[-1]["type"] == "end", (resume_after, events)
            assert events[-1]["reason"] == "interrupted by server restart"
    finally:
        restarted.stop()


# -- 6. resuming the event stream ------------------------------------------------------------


def noisy_line_numbers(events: list[Event]) -> list[int]:
    numbers = []
    for text in log_lines(events):
        match = re.fullmatch(r"line (\d+)", text)
        if match:
            numbers.append(int(match.group(1)))
    return numbers


def test_a_resumed_event_stream_loses_and_repeats_nothing(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    server = make_server()
    noisy = project("noisy")
    job_id = submit_async(noisy, server)

    def reached_line(n: int) -> Callable[[Event], bool]:
        return lambda event: has_line(event, f"line {n}")

    # Hang up mid-job twice, each time resuming after the last event seen.
    events = read_events(server, job_id, stop=reached_line(500), what="line 500")
    cuts = [(events[-1]["seq"], server.job(job_id)["status"])]
    events += read_events(
        server,
        job_id,
        headers={"Last-Event-ID": str(events[-1]["seq"])},
        stop=reached_line(1800),
        what="line 1800",
    )
    cuts.append((events[-1]["seq"], server.job(job_id)["status"]))
    events += read_events(server, job_id, headers={"Last-Event-ID": str(events[-1]["seq"])})

    assert any(status == "running" for _, status in cuts), f"no cut while running: {cuts}"
    seqs = [event["seq"] for event in events]
    assert seqs == list(range(1, len(events) + 1)), "a gap or a repeat in the resumed stream"
    assert events[-1]["type"] == "end"
    assert events[-1]["status"] == "succeeded"
    assert noisy_line_numbers(events) == list(range(NOISY_LINES))

    # `?after=N` gives the same events as `Last-Event-ID: N`, live or replayed.
    assert read_events(server, job_id, params={"after": 0}) == events
    for cut, _ in cuts:
        assert read_events(server, job_id, params={"after": cut}) == events[cut:]
        assert read_events(server, job_id, headers={"Last-Event-ID": str(cut)}) == events[cut:]


def test_resuming_with_after_while_the_job_runs(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    server = make_server()
    noisy = project("noisy")
    job_id = submit_async(noisy, server)

    events: list[Event] = []
    for n in (300, 1200, 2400):
        after = events[-1]["seq"] if events else 0
        events += read_events(
            server,
            job_id,
            params={"after": after},
            stop=lambda event, n=n: has_line(event, f"line {n}"),
            what=f"line {n}",
        )
    events += read_events(server, job_id, params={"after": events[-1]["seq"]})

    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert noisy_line_numbers(events) == list(range(NOISY_LINES))
    assert events == job_log(server, job_id)
