"""How `ci` shows a group of jobs: prefixed lines, the merged outcome, its exit code."""

from __future__ import annotations

import io
from typing import Any

import pytest

from ci_client import cli
from ci_client.client import Event
from ci_client.render import (
    format_group_outcome,
    format_outcome,
    job_labels,
    print_group_details,
    status_label,
)
from ci_client.terminal import SafeStream


def job(job_id: str, label: str, status: str, **more: Any) -> dict[str, Any]:
    success = None if status in ("queued", "running") else status == "succeeded"
    return {"job_id": job_id, "label": label, "status": status, "success": success, **more}


def group(*jobs: dict[str, Any], status: str = "failed", **more: Any) -> dict[str, Any]:
    return {"group_id": "g-0123456789ab", "status": status, "jobs": list(jobs), **more}


def test_a_group_exits_with_its_worst_job_s_code() -> None:
    passed = job("a", "py3.11", "succeeded")
    failed = job("b", "py3.13", "failed", exit_code=1)
    no_tests = job("c", "1/2", "failed", exit_code=5)
    usage = job("d", "2/2", "failed", exit_code=4)
    assert cli._exit_code(group(passed, passed, status="succeeded")) == 0
    assert cli._exit_code(group(passed, no_tests)) == 5
    assert cli._exit_code(group(no_tests, usage)) == 4
    assert cli._exit_code(group(usage, failed, no_tests)) == 1
    assert cli._exit_code(group(passed, job("e", "py3.12", "cancelled"))) == 1


def test_a_group_whose_shards_collected_different_tests_fails_though_its_jobs_passed() -> None:
    warning = (
        "the shards collected different tests (2 sets): some tests may have run twice or not at all"
    )
    ended = group(
        job("a", "1/2", "succeeded"),
        job("b", "2/2", "succeeded"),
        success=False,
        summary={"passed": 40, "warning": warning},
        duration_seconds=3.0,
    )
    assert cli._exit_code(ended) == 1
    assert (
        format_group_outcome(ended) == f"Group g-0123456789ab failed: 40 passed ({warning}) in 3.0s"
    )


def test_ci_show_of_a_group_says_what_each_shard_collected() -> None:
    said = {"passed": 6, "collected": 12, "collected_sha256": "85dc4e8a82fbdffe" * 4}
    ended = group(
        job("a", "1/2", "succeeded", summary=said),
        job("b", "2/2", "succeeded", summary={"passed": 6, "collected_sha256": "not said"}),
        job("c", "3/2", "succeeded", summary={"passed": 6}),
        success=False,
        summary={"passed": 18},
    )
    out = io.StringIO()
    print_group_details(ended, out)
    assert "  1/2  a succeeded: 6 passed; collected 12 tests (85dc4e8a82fb)\n" in out.getvalue()
    assert "  2/2  b succeeded: 6 passed; did not say what it collected\n" in out.getvalue()
    assert "  3/2  c succeeded: 6 passed\n" in out.getvalue()


def test_a_group_s_outcome_sums_its_counts_and_names_the_jobs_that_did_not_pass() -> None:
    ended = group(
        job("a", "py3.11", "succeeded"),
        job("b", "py3.13", "failed"),
        job("c", "py3.14", "timed_out"),
        summary={"passed": 38, "failed": 2},
        duration_seconds=14.12,
    )
    assert format_group_outcome(ended) == (
        "Group g-0123456789ab failed: 38 passed, 2 failed in 14.1s "
        "(py3.13 failed, py3.14 timed out)"
    )
    assert format_outcome(ended) == format_group_outcome(ended)
    all_failed = group(job("a", "1/2", "failed"), job("b", "2/2", "failed"))
    assert format_group_outcome(all_failed) == "Group g-0123456789ab failed (all 2 failed)"
    passed = group(job("a", "1/2", "succeeded"), status="succeeded", summary={"passed": 3})
    assert format_group_outcome(passed) == "Group g-0123456789ab succeeded: 3 passed"


def test_a_job_of_a_group_says_which_it_is() -> None:
    assert format_outcome(job("0a1b2c3d4e5f", "py3.13 2/4", "failed")).startswith(
        "Job 0a1b2c3d4e5f (py3.13 2/4) failed"
    )
    assert format_outcome(job("0a1b2c3d4e5f", "", "succeeded")) == "Job 0a1b2c3d4e5f succeeded"


def test_a_group_row_counts_its_ended_jobs() -> None:
    running = group(job("a", "1/2", "succeeded"), job("b", "2/2", "running"), status="running")
    assert status_label(running) == "running (1 of 2 jobs ended)"
    assert status_label(group(job("a", "1/2", "failed"), job("b", "2/2", "failed"))) == (
        "failed (2 jobs)"
    )


def test_prefixes_are_padded_to_the_longest_label() -> None:
    labels = job_labels([job("a", "py3.11", "queued"), job("b", "py3.11 2/4", "queued")])
    assert labels == {"a": "py3.11     | ", "b": "py3.11 2/4 | "}


def test_each_line_of_a_job_s_output_is_prefixed_and_made_safe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = io.StringIO()
    event = Event(3, "log", {"stream": "stdout", "text": "one\n\x1b]0;pwned\x07two"})
    cli._print_prefixed(event, "a", "py3.13 | ", SafeStream(out))
    cli._print_prefixed(Event(4, "end", {"status": "succeeded"}), "a", "py3.13 | ", SafeStream(out))
    assert out.getvalue() == "py3.13 | one\npy3.13 | \\x1b]0;pwned\\x07two\n"
    assert capsys.readouterr().err == "py3.13 | Job a succeeded\n"
