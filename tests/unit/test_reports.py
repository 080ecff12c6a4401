"""Reading a job's JUnit report (hostile input) and pytest's summary line."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestSummary as Summary
from ci_server.runner.reports import (
    OutputTail,
    ReportLimits,
    ReportRefused,
    read_report,
    with_pytest_counts,
    with_reruns,
)

LIMITS = ReportLimits(max_bytes=1024**2, max_results=1000)
NAME = "junit.xml"

# What pytest 9.2 writes (junit_family=xunit1, --continue-on-collection-errors), shortened.
PYTEST_REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="2" failures="2" skipped="3" tests="9" time="0.032">
<testcase classname="" name="tests.test_broken" file="tests/test_broken.py" time="0.000">
<error message="collection failure">ImportError while importing test module 'tests/test_broken.py'.
Traceback:
tests/test_broken.py:1: in &lt;module&gt;
    import foo_missing_module
E   ModuleNotFoundError: No module named 'foo_missing_module'</error></testcase>
<testcase classname="tests.test_mix" name="test_pass" file="tests/test_mix.py" time="0.5" />
<testcase classname="tests.test_mix" name="test_fail" file="tests/test_mix.py" time="0.001">
<failure message="assert 1 == 2">E   assert 1 == 2</failure><system-out>out</system-out>
</testcase>
<testcase classname="tests.test_mix" name="test_skip" file="tests/test_mix.py" time="0">
<skipped type="pytest.skip" message="not today">tests/test_mix.py:5: not today</skipped>
</testcase>
<testcase classname="tests.test_mix" name="test_xfail" file="tests/test_mix.py" time="0">
<skipped type="pytest.xfail" message="known bug" /></testcase>
<testcase classname="tests.test_mix" name="test_xpass" file="tests/test_mix.py" time="0" />
<testcase classname="tests.test_mix" name="test_error" file="tests/test_mix.py" time="0">
<error message="failed on setup with &quot;RuntimeError: boom&quot;">E   Runtime</error>
</testcase>
<testcase classname="tests.test_mix.TestK" name="test_m" file="tests/test_mix.py" time="x" />
</testsuite></testsuites>
"""
BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<testsuites><testsuite><testcase name="&lol3;" /></testsuite></testsuites>
"""


def write(folder: Path, text: str) -> Path:
    path = folder / NAME
    path.write_text(text)
    return path


def cases(count: int, inside: str = "") -> str:
    body = "".join(
        f'<testcase classname="t" name="test_{n}" file="t.py" time="0">{inside}</testcase>'
        for n in range(count)
    )
    return f"<testsuites><testsuite>{body}</testsuite></testsuites>"


def refusal(folder: Path, limits: ReportLimits = LIMITS) -> str:
    with pytest.raises(ReportRefused) as refused:
        read_report(folder, NAME, limits)
    return str(refused.value)


def test_every_outcome_pytest_writes_is_read(tmp_path: Path) -> None:
    write(tmp_path, PYTEST_REPORT)

    report = read_report(tmp_path, NAME, LIMITS)

    assert report is not None
    assert [(r.node_id, r.outcome, r.position) for r in report.results] == [
        ("tests/test_broken.py", Outcome.ERROR, 0),
        ("tests/test_mix.py::test_pass", Outcome.PASSED, 1),
        ("tests/test_mix.py::test_fail", Outcome.FAILED, 2),
        ("tests/test_mix.py::test_skip", Outcome.SKIPPED, 3),
        ("tests/test_mix.py::test_xfail", Outcome.XFAILED, 4),
        ("tests/test_mix.py::test_xpass", Outcome.PASSED, 5),  # the report cannot tell
        ("tests/test_mix.py::test_error", Outcome.ERROR, 6),
        ("tests/test_mix.py::TestK::test_m", Outcome.PASSED, 7),
    ]
    broken, passed, failed, skipped, xfailed = report.results[:5]
    assert broken.message == "ModuleNotFoundError: No module named 'foo_missing_module'"
    assert broken.details is not None and "import foo_missing_module" in broken.details
    assert passed.duration_seconds == 0.5
    assert (failed.message, failed.details) == ("assert 1 == 2", "E   assert 1 == 2")
    assert skipped.message == "not today"
    assert xfailed.message == "known bug"
    assert report.results[-1].duration_seconds == 0.0  # time="x"
    assert report.summary == Summary(passed=3, failed=1, errors=2, skipped=1, xfailed=1)


def test_no_report_is_none(tmp_path: Path) -> None:
    assert read_report(tmp_path, NAME, LIMITS) is None
    assert read_report(tmp_path / "no-folder", NAME, LIMITS) is None


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    host_file = write(tmp_path, cases(1))  # a perfectly good report elsewhere
    output = tmp_path / "output"
    output.mkdir()
    (output / NAME).symlink_to(host_file)

    assert refusal(output) == "it is a symbolic link, not a regular file"


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / NAME)
    outcome: list[str] = []
    reader = threading.Thread(target=lambda: outcome.append(refusal(tmp_path)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # unblock it: a writer opens the FIFO
        (tmp_path / NAME).write_bytes(b"")
        raise AssertionError("reading a FIFO report blocked")
    assert outcome == ["it is a named pipe (FIFO), not a regular file"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    assert refusal(tmp_path) == "it is a directory, not a regular file"


def test_a_report_past_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    write(tmp_path, cases(100))
    limits = ReportLimits(max_bytes=1000, max_results=10)
    assert refusal(tmp_path, limits) == (
        "it is larger than the limit of 1,000 bytes (CI_MAX_REPORT_BYTES)"
    )


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (BOMB, "it declares XML entities (a possible entity expansion bomb)"),
        ("<testsuites><testsuite><testcase></testsuite>", "it is not well-formed XML (mismatched"),
        ("", "it is not well-formed XML (no element found"),
        ("<html><body/></html>", "it is not a JUnit XML report (its root is <html>)"),
        ("<testsuites>" + "<a>" * 100 + "</a>" * 100 + "</testsuites>", "its elements nest more"),
    ],
    ids=["entity-bomb", "broken", "empty", "not-junit", "too-deep"],
)
def test_a_hostile_or_broken_report_is_refused_with_a_reason(
    tmp_path: Path, text: str, reason: str
) -> None:
    write(tmp_path, text)
    assert refusal(tmp_path).startswith(reason)


def test_past_the_result_limit_tests_are_counted_not_kept(tmp_path: Path) -> None:
    write(tmp_path, cases(10, inside='<failure message="no">boom</failure>'))

    report = read_report(tmp_path, NAME, ReportLimits(max_bytes=1024**2, max_results=3))

    assert report is not None
    assert [r.position for r in report.results] == [0, 1, 2]
    assert report.summary == Summary(failed=10, results_kept=3)


def test_reading_keeps_no_more_of_the_tree_than_one_test_case(tmp_path: Path) -> None:
    """A report of many test cases, or one test case of many elements, costs little memory."""
    write(tmp_path, cases(20_000, inside="<properties/><system-out>x</system-out>" * 5))
    many = tmp_path / "many"
    many.mkdir()
    write(many, cases(1, inside="<x/>" * 200_000))
    limits = ReportLimits(max_bytes=20 * 1024**2, max_results=10)

    tracemalloc.start()
    try:
        for folder in (tmp_path, many):
            tracemalloc.reset_peak()
            report = read_report(folder, NAME, limits)
            assert report is not None
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 2 * 1024**2, f"{folder.name}: {peak:,} bytes at the peak"
    finally:
        tracemalloc.stop()


def test_long_texts_are_cut(tmp_path: Path) -> None:
    name, message, details = "n" * 5000, "m" * 5000, "d" * 20_000
    body = f'<testcase name="{name}"><failure message="{message}">{details}</failure></testcase>'
    write(tmp_path, f"<testsuite>{body}</testsuite>")

    report = read_report(tmp_path, NAME, LIMITS)

    assert report is not None
    (result,) = report.results
    assert result.node_id == "n" * 1000 + "[...]"
    assert result.message == "m" * 2000 + "\n[... cut]"
    assert result.details == "d" * 8000 + "\n[... cut]"


# -- pytest's summary line --------------------------------------------------------------------


def tail_of(*chunks: bytes) -> OutputTail:
    tail = OutputTail(size=200)
    fed: list[bytes] = []
    feed = tail.following(fed.append)
    for chunk in chunks:
        feed(chunk)
    assert b"".join(fed) == b"".join(chunks)  # what it wraps gets everything
    return tail


@pytest.mark.parametrize(
    ("output", "counts"),
    [
        (
            b"x" * 1000 + b"\n==== 2 failed, 2 passed, 1 skipped, 2 xfailed, 1 xpassed, "
            b"2 errors in 0.03s ====\n",
            {"failed": 2, "passed": 2, "skipped": 1, "xfailed": 2, "xpassed": 1, "errors": 2},
        ),
        (b"R.\n1 passed, 1 rerun in 0.02s\n", {"passed": 1, "rerun": 1}),
        (
            b"\x1b[32m==== \x1b[32m\x1b[1m3 passed\x1b[0m, \x1b[33m1 warning\x1b[0m\x1b[32m in "
            b"75.20s (0:01:15)\x1b[0m\x1b[32m ====\x1b[0m\r\n",
            {"passed": 3, "warning": 1},
        ),
        (b"=== 1 passed in 0.1s ===\n=== 9 failed in 0.1s ===\natexit noise\n", {"failed": 9}),
        (b"==== no tests ran in 0.01s ====\n", None),
        (b"", None),
    ],
    ids=["all-outcomes", "quiet-rerun", "colour", "last-line-wins", "no-tests", "nothing"],
)
def test_pytest_counts_come_from_its_last_summary_line(
    output: bytes, counts: dict[str, int] | None
) -> None:
    half = len(output) // 2
    assert tail_of(output[:half], output[half:]).pytest_counts() == counts


def test_unexpected_passes_and_reruns_move_out_of_the_passes() -> None:
    report = Summary(passed=5, failed=1)

    assert with_pytest_counts(report, {"passed": 2, "xpassed": 1, "rerun": 2}) == Summary(
        passed=2, failed=1, xpassed=1, rerun=2
    )
    assert with_pytest_counts(report, {"xpassed": 9}) == report  # not about this report
    assert with_pytest_counts(report, None) == report


# -- the summary against the exit code --------------------------------------------------------


@pytest.mark.parametrize(
    ("summary", "exit_code", "warning"),
    [
        (Summary(passed=4), 0, None),
        (Summary(passed=4, xfailed=1, skipped=2), 0, None),
        (Summary(passed=4, failed=1), 1, None),
        (Summary(errors=1), 2, None),  # a collection error interrupts the session
        (Summary(), 5, None),  # no tests
        (Summary(failed=605_780), 0, "report disagrees with exit code 0"),
        (Summary(passed=1, errors=1), 0, "report disagrees with exit code 0"),
        (Summary(passed=4), 1, "report disagrees with exit code 1"),
        (Summary(passed=4, xpassed=1), 137, "report disagrees with exit code 137"),
    ],
)
def test_counts_that_contradict_the_exit_code_carry_a_warning(
    summary: Summary, exit_code: int, warning: str | None
) -> None:
    assert summary.checked(exit_code).warning == warning


# What pytest-rerunfailures 16.7 writes with --reruns 3 (pytest 9, xunit1): each rerun is a
# plain passing test case before the last run's, whatever it did.
RERUN_REPORT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests">
<testsuite name="pytest" errors="0" failures="1" skipped="0" tests="3" time="0.156">
<testcase classname="test_f" name="test_flaky" file="test_f.py" line="1" time="0.011" />
<testcase classname="test_f" name="test_flaky" file="test_f.py" line="1" time="0.001" />
<testcase classname="test_f" name="test_ok" file="test_f.py" line="6" time="0.001" />
<testcase classname="test_f" name="test_bad" file="test_f.py" line="8" time="0.008" />
<testcase classname="test_f" name="test_bad" file="test_f.py" line="8" time="0.001" />
<testcase classname="test_f" name="test_bad" file="test_f.py" line="8" time="0.001" />
<testcase classname="test_f" name="test_bad" file="test_f.py" line="8" time="0.001">
<failure message="assert 0">E       assert 0</failure></testcase>
</testsuite></testsuites>
"""


def test_a_test_that_failed_then_passed_on_a_rerun_is_flaky(tmp_path: Path) -> None:
    report = read_report(write(tmp_path, RERUN_REPORT).parent, NAME, LIMITS)
    assert report is not None
    counts = OutputTail()
    counts.feed(b"1 failed, 2 passed, 4 rerun in 0.15s\n")
    summary = with_pytest_counts(report.summary, counts.pytest_counts())
    results, summary = with_reruns(report.results, summary)
    assert [(r.node_id, r.outcome, r.message) for r in results] == [
        ("test_f.py::test_flaky", Outcome.FLAKY, "failed, then passed on rerun 1"),
        ("test_f.py::test_ok", Outcome.PASSED, None),
        ("test_f.py::test_bad", Outcome.FAILED, "assert 0"),
    ]
    assert results[0].duration_seconds == pytest.approx(0.012)  # all its runs
    assert summary == Summary(passed=1, failed=1, flaky=1, rerun=4)
    assert summary.total == 3 and summary.checked(1) == summary


def test_without_reruns_a_repeated_node_id_is_not_flaky(tmp_path: Path) -> None:
    """A call's failure and its teardown's error are two test cases of one node id."""
    report = read_report(write(tmp_path, RERUN_REPORT).parent, NAME, LIMITS)
    assert report is not None
    assert with_reruns(report.results, report.summary) == (report.results, report.summary)
