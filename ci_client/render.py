"""How jobs and events look in a terminal."""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

from ci_client.client import Event
from ci_common.sizes import format_size
from ci_common.tables import local_time, print_table

SYSTEM_PREFIX = "[ci] "


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_time(value: str | None) -> str:
    """An ISO 8601 time from the server, shown in the user's local time zone."""
    return local_time(datetime.fromisoformat(value) if value else None)


COUNTS = ("passed", "failed", "errors", "skipped", "xfailed", "xpassed", "flaky", "rerun")
"""A summary's counts, in the order they are shown."""
PROBLEM_OUTCOMES = ("failed", "error")


def format_counts(summary: dict[str, Any] | None) -> str | None:
    """pytest's way: `2 passed, 1 failed, 1 xfailed` (only the counts that are not zero),
    then the summary's warning if it has one: `4 passed (report disagrees with exit code 1)`."""
    if not summary:
        return None
    parts = [
        f"{summary[key]} {'error' if key == 'errors' and summary[key] == 1 else key}"
        for key in COUNTS
        if summary.get(key)
    ]
    text = ", ".join(parts) or "no tests ran"
    if summary.get("warning"):
        text += f" ({summary['warning']})"
    return text


def format_outcome(job: dict[str, Any]) -> str:
    """One line saying how a job ended, e.g. `Job 1a2b failed: 12 passed, 1 failed in 3.2s`;
    a job of a group says which it is: `Job 1a2b (py3.13 2/4) failed: ...`; a group, see
    format_group_outcome."""
    if is_group(job):
        return format_group_outcome(job)
    status = job["status"]
    label = f" ({job['label']})" if job.get("label") else ""
    text = _headline(f"Job {job['job_id']}{label}", job)
    details = []
    if status == "failed" and job.get("exit_code") not in (None, 0):
        details.append(f"exit code {job['exit_code']}")
    if job.get("reason"):
        details.append(job["reason"])
    if details:
        text += f" ({'; '.join(details)})"
    return text


def _headline(subject: str, item: dict[str, Any]) -> str:
    """`<subject> <status>: <counts> in <duration>`, of a job or a group."""
    text = f"{subject} {item['status'].replace('_', ' ')}"
    counts = format_counts(item.get("summary"))
    if counts:
        text += f": {counts}"
    duration = item.get("duration_seconds")
    if duration is not None:
        text += f" in {format_duration(duration)}"
    return text


def is_group(item: dict[str, Any]) -> bool:
    """Whether an item of the API is a group of jobs (it holds them) rather than a job."""
    return "jobs" in item


def format_group_outcome(group: dict[str, Any]) -> str:
    """One line saying how a group ended: its merged counts, then which jobs did not pass,
    e.g. `Group g-1a2b failed: 38 passed, 2 failed in 14.1s (py3.13 failed)`."""
    text = _headline(f"Group {group['group_id']}", group)
    unhappy = [job for job in group["jobs"] if job["status"] != "succeeded"]
    statuses = {job["status"].replace("_", " ") for job in unhappy}
    if len(unhappy) == len(group["jobs"]) > 1 and len(statuses) == 1:
        text += f" (all {len(unhappy)} {statuses.pop()})"
    elif unhappy and group["status"] != "succeeded":
        named = (
            f"{job['label'] or job['job_id']} {job['status'].replace('_', ' ')}" for job in unhappy
        )
        text += f" ({', '.join(named)})"
    return text


def job_labels(jobs: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Each job's prefix for its lines, as `docker compose logs` prints them: its label
    (else its id), padded to the longest, then ` | `."""
    labels = {job["job_id"]: job.get("label") or job["job_id"] for job in jobs}
    width = max(map(len, labels.values()), default=0)
    return {job_id: f"{label:<{width}} | " for job_id, label in labels.items()}


def format_event(event: Event) -> str | None:
    """The terminal line for an event, or None for events shown otherwise (the end)."""
    if event.type == "log":
        text = event.data.get("text", "")
        return SYSTEM_PREFIX + text if event.data.get("stream") == "system" else text
    if event.type == "status":
        return f"{SYSTEM_PREFIX}Job is {event.data.get('status')}"
    return None


def result_label(job: dict[str, Any]) -> str:
    success = job.get("success")
    if success is None:
        return "-"
    return "pass" if success else "FAIL"


def status_label(job: dict[str, Any]) -> str:
    if is_group(job):
        ended = sum(member["status"] in ENDED for member in job["jobs"])
        if job["status"] in ENDED:
            return f"{job['status']} ({len(job['jobs'])} jobs)"
        return f"{job['status']} ({ended} of {len(job['jobs'])} jobs ended)"
    if job["status"] == "queued" and job.get("queue_position"):
        return f"queued (#{job['queue_position']})"
    return job["status"]


ENDED = frozenset({"succeeded", "failed", "cancelled", "timed_out", "error"})


def print_jobs_table(jobs: list[dict[str, Any]], out: SupportsWrite[str]) -> None:
    """A row per job, or per group of jobs (its merged counts, how many jobs)."""
    headers = ("JOB ID", "PROJECT", "STATUS", "STARTED", "ENDED", "DURATION", "RESULT", "TESTS")
    rows = [
        (
            job["group_id"] if is_group(job) else job["job_id"],
            job.get("project") or "-",
            status_label(job),
            format_time(job.get("start_time")),
            format_time(job.get("end_time")),
            format_duration(job.get("duration_seconds")),
            result_label(job),
            format_counts(job.get("summary")) or "-",
        )
        for job in jobs
    ]
    print_table(headers, rows, out)


def flaky_note(test: dict[str, Any] | None) -> str:
    """What a test's history says of its flakiness: ` flaky (failed 3 of the last 20 runs
    on unchanged code)` when it passed and failed on the same content (files and
    environment), else ` flaky (failed, then passed on a rerun in 2 of its last 20 runs;
    failed in 3)`, or nothing when none of its runs was flaky."""
    if test and test.get("failures_on_flaky_content"):
        return (
            f"  flaky (failed {test['failures_on_flaky_content']} of the last "
            f"{test['runs_on_flaky_content']} runs on unchanged code)"
        )
    runs = test["runs"][:RECENT_SHOWN] if test else []
    flaky = sum(run["outcome"] == "flaky" for run in runs)
    failed = sum(run["outcome"] in PROBLEM_OUTCOMES for run in runs)
    if not flaky:
        return ""
    return (
        f"  flaky (failed, then passed on a rerun in {flaky} of its last {len(runs)} runs; "
        f"failed in {failed})"
    )


def print_group_details(group: dict[str, Any], out: SupportsWrite[str]) -> None:
    """`ci show` of a group: its merged outcome and its jobs, one line each (their
    details follow, from print_job_details)."""
    print(format_group_outcome(group), file=out)
    print(f"  project   {group.get('project') or '-'}", file=out)
    print(f"  started   {format_time(group.get('start_time'))}", file=out)
    print(f"  ended     {format_time(group.get('end_time'))}", file=out)
    width = max(len(job["label"]) for job in group["jobs"])
    for job in group["jobs"]:
        counts = format_counts(job.get("summary"))
        counts = f": {counts}" if counts else ""
        collected = format_collected(job.get("summary"))
        collected = f"; {collected}" if collected else ""
        line = f"  {job['label']:<{width}}  {job['job_id']} {job['status']}{counts}{collected}"
        print(line, file=out)


def format_collected(summary: dict[str, Any] | None) -> str | None:
    """What a shard says it collected, to compare with its group's other shards:
    `collected 40 tests (5a0c01f4e233)`, the start of their ids' SHA-256."""
    summary = summary or {}
    sha256, tests = summary.get("collected_sha256"), summary.get("collected")
    if not isinstance(sha256, str):
        return None
    if tests is None:
        return "did not say what it collected"
    return f"collected {tests} tests ({sha256[:12]})"


def print_job_details(
    job: dict[str, Any],
    results: Iterable[dict[str, Any]],
    out: SupportsWrite[str],
    history: Iterable[dict[str, Any]] = (),
) -> None:
    """`ci show`: the job's summary, then each test that did not pass, with its message,
    marked flaky when the project's `history` says so; then its flaky tests.

    A collection error (its node id is a module's path, without `::`) takes one line:
    `ERROR collecting tests/test_x.py: ModuleNotFoundError: No module named 'foo'`.
    """
    print(format_outcome(job), file=out)
    print(f"  project   {job.get('project') or '-'}", file=out)
    print(f"  started   {format_time(job.get('start_time'))}", file=out)
    print(f"  ended     {format_time(job.get('end_time'))}", file=out)
    if job.get("worker"):
        print(f"  worker    {job['worker']}", file=out)
    if job.get("pytest_args"):
        print(f"  pytest    {shlex.join(job['pytest_args'])}", file=out)
    summary = job.get("summary")
    if summary:
        counts = [f"{summary.get(key, 0)} {key}" for key in COUNTS[:-2]]
        if summary.get("flaky"):
            counts.append(f"{summary['flaky']} flaky")
        if summary.get("rerun"):
            counts.append(f"{summary['rerun']} rerun")
        print(f"  tests     {', '.join(counts)}", file=out)
        if summary.get("warning"):
            print(f"  warning   {summary['warning']}: the status follows the exit code", file=out)
        if summary.get("results_kept") is not None:
            print(
                f"  kept      the results of the first {summary['results_kept']:,} of "
                f"{summary['total']:,} tests (the server's limit)",
                file=out,
            )
    tests = {test["node_id"]: test for test in history}
    results = list(results)
    heading = False
    for result in results:
        if result["outcome"] not in PROBLEM_OUTCOMES:
            continue
        if not heading:
            print("\nFailures:", file=out)
            heading = True
        message = result.get("message") or ""
        if result["outcome"] == "error" and "::" not in result["node_id"]:
            error = f": {message}" if message else ""
            print(f"  ERROR collecting {result['node_id']}{error}", file=out)
            continue
        note = flaky_note(tests.get(result["node_id"]))
        print(f"  {result['outcome'].upper()} {result['node_id']}{note}", file=out)
        for line in message.splitlines():
            print(f"      {line}", file=out)
    flaky = [result for result in results if result["outcome"] == "flaky"]
    if flaky:
        print("\nFlaky (failed, then passed on a rerun; they do not fail the job):", file=out)
    for result in flaky:
        print(f"  FLAKY {result['node_id']}: {result.get('message') or ''}", file=out)


OUTCOME_LETTERS = {
    "passed": ".",
    "failed": "F",
    "error": "E",
    "skipped": "s",
    "xfailed": "x",
    "flaky": "R",
}
"""pytest's letters for outcomes, as its progress line prints them (R: pytest-rerunfailures'
for a rerun; here a test that failed, then passed on a rerun)."""
RECENT_SHOWN = 20
"""How many of a test's latest runs `ci tests` draws."""


def format_test_duration(seconds: float) -> str:
    """A test's duration: milliseconds below a second (most tests), else as jobs'."""
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else format_duration(seconds)


def format_recent(runs: list[dict[str, Any]]) -> str:
    """A test's latest runs as pytest's letters, oldest first: the newest is on the right."""
    latest = runs[:RECENT_SHOWN]
    return "".join(OUTCOME_LETTERS.get(run["outcome"], "?") for run in reversed(latest))


def print_test_history(tests: list[dict[str, Any]], out: SupportsWrite[str]) -> None:
    headers = ("TEST", "RECENT", "FAILED", "FLAKY", "MEDIAN", "RUNS")
    rows = [
        (
            test["node_id"],
            format_recent(test["runs"]),
            f"{test['failure_rate']:.0%}",
            f"{test['flake_rate']:.0%}",
            format_test_duration(test["median_duration"]),
            len(test["runs"]),
        )
        for test in tests
    ]
    print_table(headers, rows, out)


def print_artifacts(job_id: str, artifacts: list[dict[str, Any]], out: SupportsWrite[str]) -> None:
    """`ci show`'s last lines: the job's artifacts, each path with its size, and how to get
    them (nothing when it has none)."""
    if not artifacts:
        return
    total = format_size(sum(int(artifact.get("size", 0)) for artifact in artifacts))
    print(f"Artifacts ({len(artifacts)}, {total}): ci artifacts {job_id}", file=out)
    for artifact in artifacts:
        print(f"  {artifact.get('path')}  {format_size(int(artifact.get('size', 0)))}", file=out)
