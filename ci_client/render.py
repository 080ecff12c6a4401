"""How jobs and events look in a terminal."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

from ci_client.client import Event

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
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def format_counts(summary: dict[str, int] | None) -> str | None:
    """pytest's way: `2 passed, 1 failed, 1 skipped` (only the counts that are not zero)."""
    if not summary:
        return None
    parts = [
        f"{summary.get(key, 0)} {label}"
        for key, label in (
            ("passed", "passed"),
            ("failed", "failed"),
            ("errors", "errors" if summary.get("errors", 0) != 1 else "error"),
            ("skipped", "skipped"),
        )
        if summary.get(key, 0)
    ]
    return ", ".join(parts) or "no tests ran"


def format_outcome(job: dict[str, Any]) -> str:
    """One line saying how a job ended, e.g. `Job 1a2b failed: 12 passed, 1 failed in 3.2s`."""
    status = job["status"]
    text = f"Job {job['job_id']} {status.replace('_', ' ')}"
    counts = format_counts(job.get("summary"))
    if counts:
        text += f": {counts}"
    duration = job.get("duration_seconds")
    if duration is not None:
        text += f" in {format_duration(duration)}"
    details = []
    if status == "failed" and job.get("exit_code") not in (None, 0):
        details.append(f"exit code {job['exit_code']}")
    if job.get("reason"):
        details.append(job["reason"])
    if details:
        text += f" ({'; '.join(details)})"
    return text


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
    if job["status"] == "queued" and job.get("queue_position"):
        return f"queued (#{job['queue_position']})"
    return job["status"]


def print_jobs_table(jobs: list[dict[str, Any]], out: SupportsWrite[str]) -> None:
    headers = ("JOB ID", "STATUS", "STARTED", "ENDED", "DURATION", "RESULT", "TESTS")
    rows = [
        (
            job["job_id"],
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


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: SupportsWrite[str]
) -> None:
    """Columns as wide as their widest cell, two spaces apart (`ci list`, `ci-admin`)."""
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for row in (headers, *rows):
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip(),
            file=out,
        )


def print_job_details(
    job: dict[str, Any], results: list[dict[str, Any]], out: SupportsWrite[str]
) -> None:
    """`ci show`: the job's summary, then each test that did not pass, with its message."""
    print(format_outcome(job), file=out)
    print(f"  started   {format_time(job.get('start_time'))}", file=out)
    print(f"  ended     {format_time(job.get('end_time'))}", file=out)
    if job.get("pytest_args"):
        print(f"  pytest    {shlex.join(job['pytest_args'])}", file=out)
    summary = job.get("summary")
    if summary:
        print(
            f"  tests     {summary['passed']} passed, {summary['failed']} failed, "
            f"{summary['errors']} errors, {summary['skipped']} skipped",
            file=out,
        )
    problems = [r for r in results if r["outcome"] in ("failed", "error")]
    if problems:
        print("", file=out)
        print("Failures:", file=out)
    for result in problems:
        print(f"  {result['outcome'].upper()} {result['node_id']}", file=out)
        for line in (result.get("message") or "").splitlines():
            print(f"      {line}", file=out)
