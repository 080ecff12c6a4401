"""End to end: a project's test history through the real `ci` against a real server and
real Docker jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess, run_ci
from tests.e2e.test_cli import ProjectFactory, describe, submit

SUBTRACT = "tests/test_calc.py::test_subtract"


@pytest.mark.docker
def test_ci_tests_shows_each_test_s_recent_outcomes_rate_and_median(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    failing = project("failing")
    first = submit(failing, server)
    assert first.result.returncode == 1, describe(first.result)
    calc = failing / "calc.py"
    calc.write_text(calc.read_text().replace("b - a  # the bug", "a - b"))
    second = submit(failing, server)
    assert second.result.returncode == 0, describe(second.result)

    table = run_ci("tests", cwd=tmp_path, server=server, timeout=30)  # the latest job's project
    assert table.returncode == 0, describe(table)
    assert "Project failing:" in table.stderr, describe(table)
    assert re.search(rf"^{re.escape(SUBTRACT)}\s+F\.\s+50%\s+\d+ms\s+2$", table.stdout, re.M), (
        describe(table)
    )
    assert re.search(r"^tests/test_calc\.py::test_add\s+\.\.\s+0%", table.stdout, re.M), describe(
        table
    )

    listed = run_ci("tests", "--project", "failing", "--json", cwd=tmp_path, server=server)
    assert listed.returncode == 0, describe(listed)
    history = {test["node_id"]: test for test in json.loads(listed.stdout)}
    assert [(run["job_id"], run["outcome"]) for run in history[SUBTRACT]["runs"]] == [
        (second.job_id, "passed"),
        (first.job_id, "failed"),
    ]
    assert history[SUBTRACT]["failure_rate"] == 0.5

    slowest = run_ci(
        "tests", "--project", "failing", "--json", "--slowest", "1", cwd=tmp_path, server=server
    )
    assert slowest.returncode == 0, describe(slowest)
    assert len(json.loads(slowest.stdout)) == 1
    nothing = run_ci("tests", "--project", "nothing", cwd=tmp_path, server=server)
    assert "No test results of project 'nothing' yet." in nothing.stderr, describe(nothing)
