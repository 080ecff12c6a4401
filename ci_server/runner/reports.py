"""A job's test results: pytest's JUnit XML report, and its summary line for what the report
cannot tell.

The report is written where the tests can write, so it is hostile input. It is opened relative
to its folder without following a link and only if it is a regular file (never a link to a
host file, never a FIFO that would block the reader), read up to a size limit, and parsed
incrementally (defusedxml: no entity expansion bombs, no external entities): each test case
is dropped from the tree once read, so memory stays bounded by the limits, not by the report.
All test cases are counted; the first `max_results` are kept.

pytest's report (xunit1) marks an xfailed test as `<skipped type="pytest.xfail">`, an
unexpected pass (xfail, not strict) as a plain pass, and a rerun (pytest-rerunfailures) as an
extra passing test case. Its terminal summary line (`2 passed, 1 xpassed, 1 rerun in 0.1s`)
counts those two; `with_pytest_counts` moves them out of the passes. A test that was rerun is
its run's test cases in a row, the same node id each, all but the last a plain pass whatever it
did (pytest-rerunfailures 16): `with_reruns` makes them one result, flaky when the last passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException, EntitiesForbidden

from ci_server.models import TestOutcome, TestResult, TestSummary
from ci_server.runner.regular_files import NotRegularFile, open_regular

MAX_MESSAGE_CHARS = 2000
MAX_DETAILS_CHARS = 8000
MAX_NODE_ID_CHARS = 1000
MAX_DEPTH = 64
"""pytest nests four levels (testsuites, testsuite, testcase, failure)."""
PROBLEMS = (
    ("failure", TestOutcome.FAILED),
    ("error", TestOutcome.ERROR),
    ("skipped", TestOutcome.SKIPPED),
)
"""A test case's child elements that give its outcome, the first found deciding."""
PROBLEM_TAGS = frozenset(tag for tag, _ in PROBLEMS)
XFAIL_TYPE = "pytest.xfail"
COLLECTION_FAILURE = "collection failure"
"""pytest's message for an error collecting a module; the real one is in the traceback."""


@dataclass(frozen=True, slots=True)
class ReportLimits:
    max_bytes: int
    """A larger report is refused, not read."""
    max_results: int
    """Test cases past this many are counted, not kept."""


class ReportRefused(Exception):
    """The job left a report the server will not use; the message says why, for its log."""


@dataclass(frozen=True, slots=True)
class Report:
    results: list[TestResult]
    """The first `max_results` test cases, in the order they ran."""
    summary: TestSummary
    """The counts of every test case in the report (`results_kept` set when capped)."""


class ReportReader:
    """Reads reports in a process of its own, started at the first report.

    Parsing a large report takes seconds of CPU: in a thread it would hold the GIL against
    the event loop that long (a 49 MB report: GET /health at 39 ms p99 instead of 17 ms).
    """

    def __init__(self, limits: ReportLimits) -> None:
        self.limits = limits
        self._pool: ProcessPoolExecutor | None = None

    async def read(self, folder: Path, name: str) -> Report | None:
        """As `read_report`, in the reader's process."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, read_report, folder, name, self.limits)
        except BrokenProcessPool as e:  # killed (out of memory?): the next report gets a new one
            self._pool = None
            raise ReportRefused("the process reading it died") from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def read_report(folder: Path, name: str, limits: ReportLimits) -> Report | None:
    """The report `name` in `folder`; None when there is none; ReportRefused when unusable.

    Blocking, and CPU-bound for a large report: run it in a `ReportReader`.
    """
    try:
        stream = open_regular(folder, name)
    except NotRegularFile as e:
        raise ReportRefused(str(e)) from e
    if stream is None:
        return None
    with stream:
        if os.fstat(stream.fileno()).st_size > limits.max_bytes:
            raise ReportRefused(_too_big(limits.max_bytes))
        return _parse(_BoundedReader(stream, limits.max_bytes), limits.max_results)


def _too_big(max_bytes: int) -> str:
    return f"it is larger than the limit of {max_bytes:,} bytes (CI_MAX_REPORT_BYTES)"


class _BoundedReader:
    """A file that refuses to be read past `limit` bytes (should it grow while read)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream = stream
        self.limit = limit
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(chunk)
        if self.left < 0:
            raise ReportRefused(_too_big(self.limit))
        return chunk


def _parse(stream: _BoundedReader, max_results: int) -> Report:
    counts: Counter[TestOutcome] = Counter()
    kept: list[TestResult] = []
    try:
        for position, case in enumerate(_test_cases(stream)):
            outcome, problem = _outcome(case)
            counts[outcome] += 1
            if position < max_results:
                kept.append(_result(case, outcome, problem, position))
    except EntitiesForbidden as e:
        raise ReportRefused("it declares XML entities (a possible entity expansion bomb)") from e
    except DefusedXmlException as e:
        raise ReportRefused(f"it uses a forbidden XML feature ({type(e).__name__})") from e
    except SafeElementTree.ParseError as e:
        raise ReportRefused(f"it is not well-formed XML ({e})") from e
    summary = TestSummary.of(counts)
    if len(kept) < counts.total():
        summary = dataclasses.replace(summary, results_kept=len(kept))
    return Report(kept, summary)


def _test_cases(stream: _BoundedReader) -> Iterator[Element]:
    """Each test case of the report once read, keeping no more of the tree than needed.

    An element is removed from its parent when it ends (a test case once it has been
    looked at), unless it decides the outcome of the test case it is in (the first of its
    kind): the tree holds the open elements and those.
    """
    open_elements: list[Element] = []
    for event, element in SafeElementTree.iterparse(stream, events=("start", "end")):
        if event == "start":
            if not open_elements and element.tag not in ("testsuites", "testsuite"):
                raise ReportRefused(f"it is not a JUnit XML report (its root is <{element.tag}>)")
            open_elements.append(element)
            if len(open_elements) > MAX_DEPTH:
                raise ReportRefused(f"its elements nest more than {MAX_DEPTH} deep")
            continue
        open_elements.pop()
        if element.tag == "testcase":
            yield element
        if not open_elements:
            continue
        parent = open_elements[-1]
        if not (
            parent.tag == "testcase"
            and element.tag in PROBLEM_TAGS
            and parent.find(element.tag) is element
        ):
            parent.remove(element)


def _cut(text: str | None, limit: int, marker: str = "\n[... cut]") -> str | None:
    if not text:
        return None
    return text if len(text) <= limit else text[:limit] + marker


def _node_id(case: Element) -> str:
    """pytest's node id (`tests/test_x.py::TestY::test_z`) from a xunit1 testcase."""
    name = case.get("name", "?")
    classname = case.get("classname", "")
    file = case.get("file")
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".")
    classes = classname.removeprefix(module).strip(".")
    parts = [file, *(classes.split(".") if classes else []), name]
    return "::".join(parts)


def _collection_error(details: str | None) -> str | None:
    """The error pytest met collecting a module: the last `E   ` line of its traceback."""
    lines = [line.strip() for line in (details or "").splitlines() if line.strip()]
    errors = [line.removeprefix("E").strip() for line in lines if line.startswith("E ")]
    return (errors or lines or [None])[-1]


def _outcome(case: Element) -> tuple[TestOutcome, Element | None]:
    """The test case's outcome and the element that says it (none for a pass)."""
    for tag, outcome in PROBLEMS:
        problem = case.find(tag)
        if problem is not None:
            if outcome is TestOutcome.SKIPPED and problem.get("type") == XFAIL_TYPE:
                return TestOutcome.XFAILED, problem
            return outcome, problem
    return TestOutcome.PASSED, None


def _result(
    case: Element, outcome: TestOutcome, problem: Element | None, position: int
) -> TestResult:
    try:
        duration = float(case.get("time", "0"))
    except ValueError:
        duration = 0.0
    node_id = _node_id(case)
    message = details = None
    if problem is not None:
        message, details = problem.get("message"), problem.text
        if outcome is TestOutcome.ERROR and message == COLLECTION_FAILURE:
            node_id = case.get("file") or case.get("name", "?")
            message = _collection_error(details)
    return TestResult(
        _cut(node_id, MAX_NODE_ID_CHARS, "[...]") or "?",
        outcome,
        duration,
        _cut(message, MAX_MESSAGE_CHARS),
        _cut(details, MAX_DETAILS_CHARS),
        position,
    )


# -- pytest's summary line -------------------------------------------------------------------

ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
SUMMARY_LINE = re.compile(
    r"^=*\s*(?P<counts>\d+ [a-z][a-z ]*(?:, \d+ [a-z][a-z ]*)*) in [\d.]+s\b.*$"
)
"""pytest's last line: `2 failed, 3 passed, 1 xpassed in 0.42s`, between `=` unless -q."""


class OutputTail:
    """The end of a job's output, where pytest prints its summary line."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-self.size :]

    def following(self, feed: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """`feed`, which also keeps the tail of what it is given."""

        def both(chunk: bytes) -> None:
            feed(chunk)
            self.feed(chunk)

        return both

    def pytest_counts(self) -> dict[str, int] | None:
        """The counts of pytest's last summary line (`{"passed": 3, "xpassed": 1}`), if any."""
        text = ANSI_SGR.sub("", self._tail.decode(errors="replace"))
        for line in reversed(text.splitlines()):
            match = SUMMARY_LINE.match(line.strip())
            if match:
                items = (item.split(" ", 1) for item in match["counts"].split(", "))
                return {word: int(count) for count, word in items}
        return None


def with_pytest_counts(summary: TestSummary, counts: Mapping[str, int] | None) -> TestSummary:
    """The report's counts, with the unexpected passes and reruns pytest's line counted.

    Unless the line cannot be about the same run (more of them than the report has passes).
    """
    if not counts:
        return summary
    xpassed, rerun = counts.get("xpassed", 0), counts.get("rerun", 0)
    if xpassed + rerun > summary.passed:
        return summary
    return dataclasses.replace(
        summary, passed=summary.passed - xpassed - rerun, xpassed=xpassed, rerun=rerun
    )


def with_reruns(
    results: list[TestResult], summary: TestSummary
) -> tuple[list[TestResult], TestSummary]:
    """One result per test that was rerun (its last run's, with the time of all its runs):
    flaky when it passed in the end, as the summary then counts it (not among the passes).

    Only when pytest's line counted reruns: else the same node id twice in a row is not a
    rerun (a call's failure and its teardown's error are two test cases too)."""
    if not summary.rerun:
        return results, summary
    merged: list[tuple[TestResult, int, float]] = []  # a result, its runs, their time
    for result in results:
        if merged and merged[-1][0].node_id == result.node_id:
            _, runs, duration = merged.pop()
            merged.append((result, runs + 1, duration + result.duration_seconds))
        else:
            merged.append((result, 1, result.duration_seconds))
    kept: list[TestResult] = []
    for result, runs, duration in merged:
        if runs > 1 and result.outcome is TestOutcome.PASSED:
            message = f"failed, then passed on rerun {runs - 1}"
            result = dataclasses.replace(result, outcome=TestOutcome.FLAKY, message=message)
        kept.append(dataclasses.replace(result, duration_seconds=duration))
    flaky = sum(result.outcome is TestOutcome.FLAKY for result in kept)
    flaky = min(flaky, summary.passed)
    return kept, dataclasses.replace(summary, passed=summary.passed - flaky, flaky=flaky)
