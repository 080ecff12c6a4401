"""GET /jobs/{id}/artifacts[/path] over a real SQLite file and file blob store: the job's
report is kept as an artifact, listed with its size and digest, and downloads byte for byte
as an attachment; another user's job's artifacts are unknown to them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.fakes import FakeExecutor, FakeRun
from tests.integration.test_auth_api import act_as, add_person
from tests.integration.test_sqlite_api import UNKNOWN_ID, finished, make_settings, serve, submit

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


async def test_another_users_artifacts_answer_exactly_like_an_unknown_job(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth=True)
    ann, bob = await add_person(settings, "ann"), await add_person(settings, "bob")
    async with serve(settings, FakeExecutor(FakeRun(report=REPORT))) as client:
        job_id = (await submit(act_as(client, ann))).json()["job_id"]
        await finished(client, job_id)

        for path in ("/artifacts", "/artifacts/junit.xml", "/artifacts/none.txt"):
            unknown = await client.get(f"/jobs/{UNKNOWN_ID}{path}", headers=bob.headers)
            theirs = await client.get(f"/jobs/{job_id}{path}", headers=bob.headers)
            assert (unknown.status_code, theirs.status_code) == (404, 404)
            assert unknown.json() == {"detail": f"no job with id {UNKNOWN_ID!r}"}
            assert theirs.json() == {"detail": f"no job with id {job_id!r}"}
            assert unknown.headers.keys() == theirs.headers.keys()
        own = await client.get(f"/jobs/{job_id}/artifacts/junit.xml", headers=ann.headers)

    assert (own.status_code, own.content) == (200, REPORT.encode())
