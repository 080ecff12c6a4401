"""CI_LOG_FORMAT=json: a real server's log, after a real job, is JSON lines (uvicorn's too),
and every line about the job carries the job's id."""

from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.test_lifecycle import ProjectFactory, submit_async

pytestmark = pytest.mark.docker


def test_json_logs_parse_and_carry_the_job_id(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    server = make_server(CI_LOG_FORMAT="json", CI_WORKER_NAME="json-logs")
    job_id = submit_async(project("passing"), server)
    server.wait_for_status(job_id, "succeeded")
    server.stop()

    entries = [json.loads(line) for line in server.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    about_the_job = [entry for entry in entries if job_id in entry["message"]]
    assert [entry["message"] for entry in about_the_job if entry["logger"].startswith("ci_")] == [
        f"job {job_id}: running on worker json-logs",
        f"job {job_id}: succeeded",
    ]
    access = [entry for entry in about_the_job if entry["logger"] == "uvicorn.access"]
    assert access  # the status polls: GET /jobs/{job_id}
    assert all(entry.get("job_id") == job_id for entry in about_the_job)
