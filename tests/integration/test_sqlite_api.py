"""The HTTP API over a real SQLite file, in-process (httpx + ASGI), with the app's lifespan.

Most tests use the FakeExecutor; the last one runs a real project in the real Docker engine.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from ci_server.app import create_app
from ci_server.runner.executor import Executor
from ci_server.runner.reports import ANSI_SGR
from ci_server.settings import Settings
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun, wait_until

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}
UNKNOWN_ID = "0123456789ab"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "db_path": tmp_path / "ci.db",
        "data_dir": tmp_path / "data",
        "runner_image": "runner:test",
        "max_concurrent_jobs": 1,
        "auth": False,  # about jobs, as the anonymous admin; keys: test_auth_api.py
        "worker_grace": 1.0,  # a test's end stops the app: jobs still gated end at once
    }
    return Settings(**(values | overrides))


@asynccontextmanager
async def serve(
    settings: Settings, executor: Executor | None, *, worker: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan (store, hub, workers) running; a client talking to it.
    `worker=False`: an API replica, as `ci-server --no-worker`."""
    app = create_app(settings, executor=executor, worker=worker)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ci.test") as client:
            yield client


def zip_bytes(files: Mapping[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


async def submit(
    client: httpx.AsyncClient,
    files: Mapping[str, str | bytes] = PASSING_PROJECT,
    **form: Any,
) -> httpx.Response:
    upload = {"archive": ("project.zip", zip_bytes(files), "application/zip")}
    return await client.post("/jobs", files=upload, data=form)


async def finished(client: httpx.AsyncClient, job_id: str, within: float = 10) -> dict[str, Any]:
    """Poll the job until it has finished; return its JSON."""
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        response = await client.get(f"/jobs/{job_id}")
        assert response.status_code == 200
        latest = response.json()
        return latest["status"] in TERMINAL

    await wait_until(done, what=f"job {job_id} to finish", within=within, interval=0.02)
    return latest


@dataclass(frozen=True)
class Sse:
    id: int
    event: str
    data: dict[str, Any]


def parse_sse(body: str) -> list[Sse]:
    events: list[Sse] = []
    for block in re.split(r"\r?\n\r?\n", body):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):  # ":" starts a comment (keep-alive)
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "data" in fields:
            events.append(Sse(int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def sse(client: httpx.AsyncClient, job_id: str, **request: Any) -> list[Sse]:
    """The job's event stream; it ends (and so this returns) after the job's END event."""
    async with asyncio.timeout(10):
        response = await client.get(f"/jobs/{job_id}/events", **request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings, FakeExecutor()) as client:
        yield client


async def test_submitted_job_is_created_and_runs_to_success(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    response = await submit(client, pytest_args=["-k", "fast"], timeout_seconds="60")
    assert response.status_code == 201
    job = response.json()
    assert re.fullmatch(r"[0-9a-f]{12}", job["job_id"])
    assert job["status"] in {"queued", "running"}
    assert job["success"] is None
    assert job["end_time"] is None
    assert "start_time" in job
    assert job["pytest_args"] == ["-k", "fast"]
    assert job["timeout_seconds"] == 60

    done = await finished(client, job["job_id"])
    assert done["status"] == "succeeded"
    assert done["success"] is True
    assert done["exit_code"] == 0
    start = datetime.fromisoformat(done["start_time"])
    end = datetime.fromisoformat(done["end_time"])
    assert datetime.fromisoformat(done["created_at"]) <= start <= end
    assert settings.db_path.is_file()  # a real SQLite database


async def test_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    for path in (f"/jobs/{UNKNOWN_ID}", f"/jobs/{UNKNOWN_ID}/events"):
        response = await client.get(path)
        assert response.status_code == 404
        assert UNKNOWN_ID in response.json()["detail"]
    assert (await client.post(f"/jobs/{UNKNOWN_ID}/cancel")).status_code == 404


@pytest.mark.parametrize("bad_id", ["not-a-job", "0123456789AB", "0123456789a", "0123456789abc"])
async def test_malformed_job_id_is_422(client: httpx.AsyncClient, bad_id: str) -> None:
    assert (await client.get(f"/jobs/{bad_id}")).status_code == 422
    assert (await client.post(f"/jobs/{bad_id}/cancel")).status_code == 422
    assert (await client.get(f"/jobs/{bad_id}/events")).status_code == 422


async def test_upload_that_is_not_a_zip_is_400(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    upload = {"archive": ("project.zip", b"definitely not a zip file" * 10, "application/zip")}
    response = await client.post("/jobs", files=upload)
    assert response.status_code == 400
    assert "not a valid zip archive" in response.json()["detail"]
    assert (await client.get("/jobs")).json() == []
    data = settings.resolved_data_dir
    assert [p for p in data.rglob("*") if p.is_file()] == []  # nothing kept


async def test_unsafe_zip_is_400(client: httpx.AsyncClient) -> None:
    response = await submit(client, {**PASSING_PROJECT, "../escape.py": "x = 1\n"})
    assert response.status_code == 400
    assert "outside the project" in response.json()["detail"]


@pytest.mark.parametrize("how", ["with-content-length", "streamed"])
async def test_upload_over_the_size_limit_is_413(tmp_path: Path, how: str) -> None:
    async with serve(make_settings(tmp_path, max_upload_bytes=10_000), FakeExecutor()) as client:
        big = zip_bytes({**PASSING_PROJECT, "blob.bin": os.urandom(50_000)})
        if how == "with-content-length":
            response = await client.post("/jobs", files={"archive": ("p.zip", big)})
        else:
            # No Content-Length: the limit must be enforced while the body streams in.
            boundary = uuid.uuid4().hex
            body = (
                (
                    f"--{boundary}\r\nContent-Disposition: form-data; name=archive; "
                    f'filename="p.zip"\r\nContent-Type: application/zip\r\n\r\n'
                ).encode()
                + big
                + f"\r\n--{boundary}--\r\n".encode()
            )

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(body), 4096):
                    yield body[start : start + 4096]

            response = await client.post(
                "/jobs",
                content=chunks(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )
            assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert "10000 bytes" in response.json()["detail"]
        assert (await client.get("/jobs")).json() == []


async def test_cancelling_a_finished_job_is_409(client: httpx.AsyncClient) -> None:
    job_id = (await submit(client)).json()["job_id"]
    before = await finished(client, job_id)
    response = await client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 409
    assert "already finished" in response.json()["detail"]
    assert (await client.get(f"/jobs/{job_id}")).json() == before


async def test_cancelling_queued_and_running_jobs(tmp_path: Path) -> None:
    executor = FakeExecutor(FakeRun(gate=asyncio.Event()))
    async with serve(make_settings(tmp_path), executor) as client:
        running = (await submit(client)).json()["job_id"]
        queued = (await submit(client)).json()["job_id"]
        await wait_until(lambda: running in executor.running, what="the first job running")
        shown = (await client.get(f"/jobs/{queued}")).json()
        assert (shown["status"], shown["queue_position"]) == ("queued", 1)

        response = await client.post(f"/jobs/{queued}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        response = await client.post(f"/jobs/{running}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        assert response.json()["success"] is False
        assert executor.cancelled == [running]
        assert [spec.job_id for spec in executor.specs] == [running]


async def test_event_stream_of_a_finished_job(client: httpx.AsyncClient) -> None:
    job_id = (await submit(client)).json()["job_id"]
    await finished(client, job_id)

    events = await sse(client, job_id)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert len(events) > 4
    assert [e.event for e in events][:2] == ["status", "status"]
    assert events[-1].event == "end"
    assert events[-1].data["status"] == "succeeded"
    assert events[-1].data["success"] is True
    assert all(e.data["seq"] == e.id and e.data["type"] == e.event for e in events)
    assert "test_sample.py::test_ok PASSED" in [e.data.get("text") for e in events]

    resumed = await sse(client, job_id, headers={"Last-Event-ID": "3"})
    assert resumed == events[3:]
    assert await sse(client, job_id, params={"after": 3}) == events[3:]
    assert await sse(client, job_id, params={"tail": 0}) == events[-1:]
    assert await sse(client, job_id, params={"tail": 2}) == events[-2:]


async def test_listing_is_newest_first_and_pages(client: httpx.AsyncClient) -> None:
    ids = [(await submit(client)).json()["job_id"] for _ in range(5)]
    for job_id in ids:
        await finished(client, job_id)
    newest_first = list(reversed(ids))

    listed = (await client.get("/jobs")).json()
    assert [job["job_id"] for job in listed] == newest_first
    first = (await client.get("/jobs", params={"limit": 2})).json()
    second = (await client.get("/jobs", params={"limit": 2, "before": ids[3]})).json()
    last = (await client.get("/jobs", params={"limit": 2, "before": ids[1]})).json()
    pages = [[job["job_id"] for job in page] for page in (first, second, last)]
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]


async def test_jobs_are_named_and_listed_by_project(client: httpx.AsyncClient) -> None:
    packaged = {**PASSING_PROJECT, "pyproject.toml": '[project]\nname = "calc"\n'}
    submitted = {
        "calc": await submit(client, packaged, directory="checkout"),
        "shop": await submit(client, packaged, project="shop", directory="checkout"),
        "checkout": await submit(client, directory="checkout"),
        None: await submit(client),  # an older client: no folder, and no name in the files
        "calc again": await submit(client, packaged),
    }
    names = {}
    for expected, response in submitted.items():
        assert response.status_code == 201, response.text
        names[response.json()["job_id"]] = response.json()["project"]
        assert response.json()["project"] == (expected and expected.removesuffix(" again"))
    for job_id, name in names.items():
        assert (await finished(client, job_id))["project"] == name

    calcs = (await client.get("/jobs", params={"project": "calc"})).json()
    assert [job["job_id"] for job in calcs] == [i for i in reversed(names) if names[i] == "calc"]
    page = (await client.get("/jobs", params={"project": "calc", "limit": 1})).json()
    rest = await client.get("/jobs", params={"project": "calc", "before": page[0]["job_id"]})
    assert [job["job_id"] for job in page + rest.json()] == [job["job_id"] for job in calcs]
    assert (await client.get("/jobs", params={"project": "nothing"})).json() == []

    refused = await submit(client, packaged, project="a\x1bb")
    assert refused.status_code == 400
    assert "printable characters" in refused.json()["detail"]


async def test_jobs_and_events_survive_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with serve(settings, FakeExecutor()) as client:
        job_id = (await submit(client)).json()["job_id"]
        before = await finished(client, job_id)
        events = await sse(client, job_id)

    async with serve(settings, FakeExecutor()) as restarted:
        assert (await restarted.get(f"/jobs/{job_id}")).json() == before
        assert await sse(restarted, job_id) == events
        assert [job["job_id"] for job in (await restarted.get("/jobs")).json()] == [job_id]


@pytest.mark.docker
async def test_real_project_in_real_docker(
    tmp_path: Path, runner_image: str, docker_client: docker.DockerClient
) -> None:
    """The whole server path with the real executor: pass, then fail, in the runner image."""
    settings = make_settings(tmp_path, runner_image=runner_image, env_cache=False)
    failing = {
        "requirements.txt": "pytest\n",
        "test_sample.py": "def test_ok():\n    pass\n\ndef test_bad():\n    assert 1 == 2\n",
    }
    async with serve(settings, executor=None) as client:
        passed_id = (await submit(client)).json()["job_id"]
        failed_id = (await submit(client, failing)).json()["job_id"]
        passed = await finished(client, passed_id, within=180)
        failed = await finished(client, failed_id, within=180)

        assert (passed["status"], passed["exit_code"], passed["success"]) == ("succeeded", 0, True)
        assert (failed["status"], failed["exit_code"], failed["success"]) == ("failed", 1, False)
        # pytest prints colour (--color=yes): the log is read without it.
        log = [ANSI_SGR.sub("", e.data.get("text", "")) for e in await sse(client, failed_id)]
        assert any("FAILED test_sample.py::test_bad" in line for line in log)
        assert any("1 failed, 1 passed" in line for line in log)

    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"ci.instance={settings.instance_id}"}, ignore_removed=True
    )
    assert leftovers == []
