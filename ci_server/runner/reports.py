"""Per-test results from the JUnit XML report pytest writes in the container.

The report is written by the project's own code, so it is parsed as hostile input
(defusedxml refuses entity expansion bombs) and read only up to a size limit.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeElementTree
from defusedxml.common import DefusedXmlException

from ci_server.models import TestOutcome, TestResult

MAX_REPORT_BYTES = 50 * 1024**2
MAX_MESSAGE_CHARS = 2000
MAX_DETAILS_CHARS = 8000


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


def _cut(text: str | None, limit: int) -> str | None:
    if not text:
        return None
    return text if len(text) <= limit else text[:limit] + "\n[... cut]"


def _result(case: Element) -> TestResult:
    outcome = TestOutcome.PASSED
    problem: Element | None = None
    for tag, tag_outcome in (
        ("failure", TestOutcome.FAILED),
        ("error", TestOutcome.ERROR),
        ("skipped", TestOutcome.SKIPPED),
    ):
        problem = case.find(tag)
        if problem is not None:
            outcome = tag_outcome
            break
    try:
        duration = float(case.get("time", "0"))
    except ValueError:
        duration = 0.0
    message = details = None
    if problem is not None:
        message = _cut(problem.get("message"), MAX_MESSAGE_CHARS)
        details = _cut(problem.text, MAX_DETAILS_CHARS)
    return TestResult(_node_id(case), outcome, duration, message, details)


def read_junit_report(path: Path) -> list[TestResult] | None:
    """The tests in the report, or None when there is no usable report."""
    if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
        return None
    try:
        root = SafeElementTree.parse(path).getroot()
    except (SafeElementTree.ParseError, DefusedXmlException, OSError):
        return None
    if root is None:
        return None
    return [_result(case) for case in root.iter("testcase")]
