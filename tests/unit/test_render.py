"""How `ci show` marks a failing test that its project's history says is flaky."""

from __future__ import annotations

import io

from ci_client.render import flaky_note, print_job_details


def history(*outcomes: str) -> dict[str, object]:
    """A test's history as GET /tests answers it: its runs newest first."""
    runs = [
        {"job_id": str(n), "outcome": o, "duration_seconds": 0.1} for n, o in enumerate(outcomes)
    ]
    flaky = outcomes.count("flaky")
    return {"node_id": "t.py::a", "runs": runs, "flaky_runs": flaky}


def test_a_failure_is_marked_flaky_from_its_recent_runs() -> None:
    test = history("failed", "flaky", "passed", "failed", "flaky", "failed", *["passed"] * 30)
    assert flaky_note(test) == (
        "  flaky (failed, then passed on a rerun in 2 of its last 20 runs; failed in 3)"
    )
    assert flaky_note(history("failed", "passed")) == ""
    assert flaky_note(None) == ""


def test_a_failure_on_unchanged_code_is_marked_from_the_runs_on_that_code() -> None:
    test = {**history("failed", "passed", "failed", "flaky", *["passed"] * 20)}
    test |= {"runs_on_flaky_content": 20, "failures_on_flaky_content": 3}
    assert flaky_note(test) == "  flaky (failed 3 of the last 20 runs on unchanged code)"


def test_show_lists_failures_with_their_mark_and_the_flaky_tests() -> None:
    job = {"job_id": "j1", "status": "succeeded", "project": "app", "summary": {"flaky": 1}}
    results = [
        {"node_id": "t.py::a", "outcome": "failed", "message": "assert 0"},
        {"node_id": "t.py::b", "outcome": "flaky", "message": "failed, then passed on rerun 1"},
    ]
    out = io.StringIO()
    print_job_details(job, results, out, [history("failed", "flaky")])
    text = out.getvalue()
    assert "FAILED t.py::a  flaky (failed, then passed on a rerun in 1 of its last 2 runs" in text
    assert "FLAKY t.py::b: failed, then passed on rerun 1" in text
    assert "Job j1 succeeded: 1 flaky" in text
