"""CI_LOG_FORMAT=json: one JSON object per line, and the job's id on every line about a job."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

from ci_server.log_format import JobIdFilter, JsonFormatter, about_job

logger = logging.getLogger("ci_server.test")


def test_a_line_has_time_level_logger_and_message() -> None:
    record = logging.LogRecord("ci_server.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    JobIdFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert set(entry) == {"time", "level", "logger", "message"}
    assert (entry["level"], entry["logger"], entry["message"]) == ("WARNING", "ci_server.x", "a b")
    assert entry["time"].endswith("+00:00")


def test_every_line_about_a_job_carries_its_id() -> None:
    async def run() -> None:
        with about_job("0123456789ab"):
            logger.info("in the job's task")
            await asyncio.create_task(asyncio.to_thread(logger.info, "in a thread it started"))
        logger.info("after the job")
        logger.info("naming a job", extra={"job_id": "ba9876543210"})

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # as log_format.configure_logging makes it
    handler.addFilter(JobIdFilter())
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        asyncio.run(run())
    finally:
        logger.removeHandler(handler)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["message"], e.get("job_id")) for e in entries] == [
        ("in the job's task", "0123456789ab"),
        ("in a thread it started", "0123456789ab"),
        ("after the job", None),
        ("naming a job", "ba9876543210"),
    ]


def test_an_exception_stays_on_its_line() -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.LogRecord(
            "ci_server.x", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: bad\nthing" in json.loads(line)["exception"]
