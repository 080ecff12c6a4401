"""What the pipeline keeps of a job's report, and what it says about it in the job's log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_server.models import Job, JobStatus
from ci_server.models import TestResult as Result
from ci_server.models import TestSummary as Summary
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun
from tests.unit.one_process import harness
from tests.unit.test_layers import PACKAGED
from tests.unit.test_pipeline import log_lines

FAILURE = '<failure message="assert 1 == 2">E   assert 1 == 2</failure>'
XFAIL = '<skipped type="pytest.xfail" message="known bug" />'


def report(*cases: str) -> str:
    return f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>"


def case(name: str, inside: str = "") -> str:
    return f'<testcase classname="t" name="{name}" file="t.py">{inside}</testcase>'


@dataclass(frozen=True)
class Finished:
    job: Job
    results: list[Result]
    said: list[str]
    """The job's `[ci]` lines after the tests ran, but those about its artifacts."""


async def run_job(
    tmp_path: Path, run: FakeRun, files: Mapping[str, str] = PASSING_PROJECT, **settings: Any
) -> Finished:
    async with harness(tmp_path, FakeExecutor(run), **settings) as h:
        job = await h.submit(files)
        events = await h.events_until_end(job.id)
        system = log_lines(events, "system")
        ran = next(n for n, line in enumerate(system) if line.startswith("Running in"))
        said = [line for line in system[ran + 1 :] if not line.startswith("Artifacts:")]
        return Finished(await h.store.get_job(job.id), await h.store.test_results(job.id), said)


async def test_counts_are_the_report_s_with_the_unexpected_passes_pytest_counted(
    tmp_path: Path,
) -> None:
    run = FakeRun(
        output=[b"...\n==== 1 failed, 1 passed, 1 xfailed, 1 xpassed in 0.1s ====\n"],
        exit_code=1,
        report=report(case("a"), case("b", FAILURE), case("c", XFAIL), case("d")),
    )

    finished = await run_job(tmp_path, run)

    assert finished.job.status is JobStatus.FAILED
    assert finished.job.summary == Summary(passed=1, failed=1, xfailed=1, xpassed=1)
    assert [r.node_id for r in finished.results] == ["t.py::a", "t.py::b", "t.py::c", "t.py::d"]
    assert finished.said == []


async def test_a_report_of_failures_for_exit_code_0_is_flagged_and_said(tmp_path: Path) -> None:
    run = FakeRun(exit_code=0, report=report(*(case(f"t{n}", FAILURE) for n in range(3))))

    finished = await run_job(tmp_path, run)

    assert finished.job.status is JobStatus.SUCCEEDED  # the exit code decides
    assert finished.job.summary == Summary(failed=3, warning="report disagrees with exit code 0")
    assert finished.said == [
        "Test report disagrees with the exit code: it says 3 failed and 0 errors, "
        "pytest exited with 0; the job's status follows the exit code"
    ]


async def test_a_report_of_passes_for_exit_code_1_is_flagged(tmp_path: Path) -> None:
    finished = await run_job(tmp_path, FakeRun(exit_code=1, report=report(case("a"))))

    assert finished.job.summary == Summary(passed=1, warning="report disagrees with exit code 1")
    assert finished.said == [
        "Test report disagrees with the exit code: it says no test failed, pytest exited "
        "with 1; the job's status follows the exit code"
    ]


async def test_a_refused_report_is_said_and_keeps_nothing(tmp_path: Path) -> None:
    broken = report(case("a")) + "<trailing/>"

    finished = await run_job(tmp_path, FakeRun(report=broken))

    assert finished.job.status is JobStatus.SUCCEEDED
    assert finished.job.summary is None
    assert finished.results == []
    column = broken.index("<trailing/>")
    assert finished.said == [
        "Test report not used: it is not well-formed XML "
        f"(junk after document element: line 1, column {column})"
    ]


async def test_a_capped_report_is_said_counted_whole_and_kept_in_part(tmp_path: Path) -> None:
    run = FakeRun(exit_code=1, report=report(*(case(f"t{n}", FAILURE) for n in range(5))))

    finished = await run_job(tmp_path, run, max_test_results=2)

    assert finished.job.summary == Summary(failed=5, results_kept=2)
    assert [r.position for r in finished.results] == [0, 1]
    assert finished.said == [
        "Test report capped: it has 5 tests; the results of the first 2 are kept "
        "(CI_MAX_TEST_RESULTS), all are counted"
    ]


async def test_a_failed_install_leaves_no_report_to_read(tmp_path: Path) -> None:
    """The job installs nothing but, when its environment could not, the project itself."""
    run = FakeRun(exit_code=100, report=report(case("a", FAILURE)))

    finished = await run_job(tmp_path, run, PACKAGED)

    assert finished.job.reason == "installing the project failed"
    assert finished.job.summary is None
    assert finished.results == []
