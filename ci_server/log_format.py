"""How the server's processes log: plain text (the default), or with CI_LOG_FORMAT=json one
JSON object per line (time, level, logger, message; job_id on every line about a job;
exception when there is one), for a log collector to parse.

A line is about a job when it is logged while the job runs (`about_job`: the worker's task
for the job, the tasks it starts and the executor's threads it calls, which copy the
context) or names the job itself (`extra={"job_id": ...}`).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"

_current_job: ContextVar[str | None] = ContextVar("ci_current_job", default=None)


@contextlib.contextmanager
def about_job(job_id: str) -> Iterator[None]:
    """Whatever is logged inside (in this task, and in the tasks and threads it starts)
    is about `job_id`."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Gives every record its `job_id`: the one it was logged with, else the context's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            record.job_id = _current_job.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = str(job_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: Literal["text", "json"]) -> None:
    """Log to stderr at `level`, in `log_format`, for every logger of the process."""
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
