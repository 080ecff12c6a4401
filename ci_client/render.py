"""How jobs and events look in a terminal."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TextIO

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


def format_outcome(job: dict[str, Any]) -> str:
    """One line saying how a job ended, e.g. `Job 1a2b succeeded in 3.2s`."""
    status = job["status"]
    text = f"Job {job['job_id']} {status.replace('_', ' ')}"
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


def print_jobs_table(jobs: list[dict[str, Any]], out: TextIO) -> None:
    headers = ("JOB ID", "STATUS", "STARTED", "ENDED", "DURATION", "RESULT")
    rows = [
        (
            job["job_id"],
            status_label(job),
            format_time(job.get("start_time")),
            format_time(job.get("end_time")),
            format_duration(job.get("duration_seconds")),
            result_label(job),
        )
        for job in jobs
    ]
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
