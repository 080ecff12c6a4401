"""End to end: a project's test history through the real `ci` against a real server and
real Docker jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.conftest import ServerFactory
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
    assert re.search(
        rf"^{re.escape(SUBTRACT)}\s+F\.\s+50%\s+0%\s+\d+ms\s+2$", table.stdout, re.M
    ), describe(table)
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


VERBOSE = ("--", "-v")
"""pytest's own output is a dot per test: a line per test is asked for."""


def order_of(stdout: str) -> list[str]:
    """The tests in the order pytest ran them, from its -v lines (VERBOSE asks for them)."""
    return re.findall(r"^(tests/test_calc\.py::\w+) (?:PASSED|FAILED)", stdout, re.M)


@pytest.mark.docker
def test_the_last_job_s_failures_run_first_or_only(
    server: ServerProcess, project: ProjectFactory
) -> None:
    failing = project("failing")  # test_subtract fails, and comes last
    first = submit(failing, server, *VERBOSE)
    assert order_of(first.result.stdout)[-1] == SUBTRACT, describe(first.result)

    again = submit(failing, server, *VERBOSE)
    assert again.result.returncode == 1, describe(again.result)
    assert order_of(again.result.stdout)[0] == SUBTRACT, describe(again.result)
    assert (
        f"[ci] Failed first: 1 test that failed in job {first.job_id} "
        "(the project's last finished) run first"
    ) in again.result.stderr, describe(again.result)

    only = run_ci("submit", "test", "--lf", *VERBOSE, cwd=failing, server=server)
    assert order_of(only.stdout) == [SUBTRACT], describe(only)
    assert "Last failed only: the 1 test that failed" in only.stderr, describe(only)

    in_order = run_ci("submit", "test", "--no-ff", *VERBOSE, cwd=failing, server=server)
    assert order_of(in_order.stdout)[-1] == SUBTRACT, describe(in_order)
    assert "Failed first" not in in_order.stderr, describe(in_order)


FLAKY = "tests/test_flaky.py::test_first_call_fails"


@pytest.mark.docker
def test_a_test_that_passes_on_a_rerun_is_flaky_and_the_job_passes(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    flaky = project("flaky")
    rerun = run_ci("submit", "test", "--rerun-failures", "3", cwd=flaky, server=server)
    assert rerun.returncode == 0, describe(rerun)
    assert "Adding pytest plugin pytest-rerunfailures: --reruns in the job's pytest arguments" in (
        rerun.stderr
    ), describe(rerun)
    assert f"[ci] Flaky: {FLAKY} failed, then passed on rerun 1" in rerun.stderr, describe(rerun)
    assert re.search(r"succeeded: 1 passed, 1 flaky, 1 rerun in", rerun.stderr), describe(rerun)

    listed = run_ci("tests", "--flaky", "--project", "flaky", cwd=tmp_path, server=server)
    assert listed.returncode == 0, describe(listed)
    assert re.search(rf"^{re.escape(FLAKY)}\s+R\s+0%\s+100%", listed.stdout, re.M), describe(listed)
    assert "test_steady" not in listed.stdout, describe(listed)

    without = submit(flaky, server)  # no reruns: its first call fails, and so does the job
    assert without.result.returncode == 1, describe(without.result)
    shown = run_ci("show", without.job_id, cwd=tmp_path, server=server)
    assert (
        f"FAILED {FLAKY}  flaky (failed, then passed on a rerun in 1 of its last 2 runs; "
        "failed in 1)"
    ) in shown.stdout, describe(shown)


@pytest.mark.docker
@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_history_survives_a_server_restart(
    database: str,
    make_server: ServerFactory,
    project: ProjectFactory,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    settings = {}
    if database == "postgresql":
        settings["CI_DATABASE_URL"] = request.getfixturevalue("postgres_database")
    server = make_server(**settings)
    run = run_ci("submit", "test", "--rerun-failures", "2", cwd=project("flaky"), server=server)
    assert run.returncode == 0, describe(run)

    server.stop()
    restarted = ServerProcess(db_path=server.db_path, env=server.env, api_key=server.api_key)
    restarted.start()
    try:
        listed = run_ci("tests", "--project", "flaky", "--json", cwd=tmp_path, server=restarted)
    finally:
        restarted.stop()
    assert listed.returncode == 0, describe(listed)
    history = {test["node_id"]: test for test in json.loads(listed.stdout)}
    assert [run["outcome"] for run in history[FLAKY]["runs"]] == ["flaky"], describe(listed)
    assert history[FLAKY]["flake_rate"] == 1.0
    assert [run["outcome"] for run in history["tests/test_flaky.py::test_steady"]["runs"]] == [
        "passed"
    ]


COIN = "tests/test_coin.py::test_heads"
COIN_TEST = """import os


def test_heads():
    assert os.urandom(1)[0] % 2 == 0, "tails"
"""
MAX_FLIPS = 20
"""Submits of one unchanged project until its coin-flip test has both passed and failed: the
chance that 20 flips all land alike is 2 in a million."""


@pytest.mark.docker
def test_a_test_that_passed_and_failed_on_unchanged_code_is_flaky(
    server: ServerProcess, tmp_path: Path
) -> None:
    coin = tmp_path / "coin"
    (coin / "tests").mkdir(parents=True)
    (coin / "tests" / "test_coin.py").write_text(COIN_TEST)
    (coin / "requirements.txt").write_text("pytest\n")
    failed_job = None
    passed = False
    for _ in range(MAX_FLIPS):
        run = submit(coin, server)
        assert run.result.returncode in (0, 1), describe(run.result)
        if run.result.returncode == 1:
            assert "AssertionError: tails" in run.result.stdout, describe(run.result)
            failed_job = run.job_id
        else:
            passed = True
        if passed and failed_job is not None:
            break
    assert passed and failed_job is not None, "20 flips landed alike"

    listed = run_ci("tests", "--flaky", "--project", "coin", "--json", cwd=tmp_path, server=server)
    assert listed.returncode == 0, describe(listed)
    [heads] = json.loads(listed.stdout)
    assert heads["node_id"] == COIN
    assert heads["failures_on_flaky_content"] >= 1, heads
    shown = run_ci("show", failed_job, cwd=tmp_path, server=server)
    assert re.search(
        rf"FAILED {re.escape(COIN)}  flaky \(failed \d+ of the last \d+ runs on unchanged code\)",
        shown.stdout,
    ), describe(shown)
