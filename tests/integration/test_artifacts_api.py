"""GET /jobs/{id}/artifacts[/path] over a real SQLite file and file blob store: the job's
report is kept as an artifact, listed with its size and digest, and downloads byte for byte
as an attachment."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.fakes import FakeExecutor, FakeRun
from tests.integration.test_sqlite_api import finished, make_settings, serve, submit

REPORT = (
    '<testsuites><testsuite><testcase classname="t" name="a" file="t.py"/></testsuite></testsuites>'
)


async def test_a_job_s_report_is_an_artifact_listed_and_downloaded(tmp_path: Path) -> None:
    async with serve(make_settings(tmp_path), FakeExecutor(FakeRun(report=REPORT))) as client:
        job_id = (await submit(client)).json()["job_id"]
        await finished(client, job_id)

        listing = await client.get(f"/jobs/{job_id}/artifacts")
        download = await client.get(f"/jobs/{job_id}/artifacts/junit.xml")
        missing = await client.get(f"/jobs/{job_id}/artifacts/htmlcov/index.html")
        escape = await client.get(f"/jobs/{job_id}/artifacts/..%2F..%2Fci.db")
        unknown_job = await client.get("/jobs/0123456789ab/artifacts")

    assert listing.status_code == 200
    assert listing.json() == [
        {
            "path": "junit.xml",
            "size": len(REPORT),
            "sha256": hashlib.sha256(REPORT.encode()).hexdigest(),
        }
    ]
    assert download.status_code == 200
    assert download.content == REPORT.encode()
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''junit.xml"
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"job {job_id} has no artifact 'htmlcov/index.html'"
    assert escape.status_code == 404
    assert unknown_job.status_code == 404
