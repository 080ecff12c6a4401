"""Hostile job output end to end: a real `ci-server`, a project printing what a terminal
would obey, and the real `ci` on a pipe and on a terminal (a pseudo-terminal).

What `ci` shows keeps the text and colour (on a terminal only) and turns every other
control character into visible text (ci_client/terminal.py).
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, ci_command, cli_env, run_ci
from tests.e2e.test_cli import describe, job_id_from_submit

ProjectFactory = Callable[[str], Path]
CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""What must never reach a terminal raw (tab and newline may)."""
SGR = re.compile(r"\x1b\[[0-9;]*m")
TEXT_KEPT = [
    "clipboard written",
    "title set",
    "bell rung",
    "cursor moved",
    "a hyperlink",
    "device control",
    "eight-bit CSI",
    "green text",
]
SHOWN_ESCAPED = [
    r"\x1b]52;c;cm0gLXJmIH4K\x07clipboard written",
    r"\x1b]0;owned window\x07title set",
    r"bell rung\x07\x07",
    r"\x1b[2A\x1b[2K\x1b[Hcursor moved",
    r"\x9b2Jeight-bit CSI",
]


def assert_inert(output: str) -> None:
    assert not CONTROLS.search(output), repr(CONTROLS.findall(output))


def on_a_terminal(*args: str, cwd: Path, server: ServerProcess, timeout: float = 60) -> str:
    """Run the real `ci` with its stdout on a pseudo-terminal; what the terminal received."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*ci_command(), *args],
        cwd=cwd,
        env=cli_env(server),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
    )
    os.close(slave)
    received = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal is closed, `ci` has exited
                break
            if not chunk:
                break
            received += chunk
        assert process.wait(timeout) == 0, process.stderr and process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        os.close(master)
    return received.decode().replace("\r\n", "\n")  # the terminal's own line ends


@pytest.mark.docker
def test_control_sequences_in_a_jobs_output_reach_no_terminal(
    server: ServerProcess, project: ProjectFactory
) -> None:
    hostile = project("hostile_output")
    submitted = run_ci("submit", "test", cwd=hostile, server=server)
    assert submitted.returncode == 1, describe(submitted)  # one test fails, on purpose
    job_id = job_id_from_submit(submitted.stderr)
    logs = run_ci("logs", job_id, cwd=hostile, server=server, timeout=60)
    shown = run_ci("show", job_id, cwd=hostile, server=server, timeout=60)

    for result in (submitted, logs, shown):
        assert_inert(result.stdout)
        assert_inert(result.stderr)
    for log in (submitted.stdout, logs.stdout):
        for text in TEXT_KEPT + SHOWN_ESCAPED:
            assert text in log, log
        assert "\ngreen text\n" in log, log  # no colour on a pipe
    test_id = r"test_fails_with_a_hostile_message[\x9d0;owned by a test id\x9c]"
    assert f"FAILED check_terminal.py::{test_id}" in shown.stdout, shown.stdout
    assert r"\x9b2J\x9d0;owned by a message\x9c" in shown.stdout, shown.stdout

    terminal = on_a_terminal("logs", job_id, cwd=hostile, server=server)
    assert "\x1b[32mgreen text\x1b[0m" in terminal, terminal  # colour, on a terminal
    assert_inert(SGR.sub("", terminal))
    for text in SHOWN_ESCAPED:
        assert text in terminal, terminal
