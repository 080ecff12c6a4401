"""Who may do what, through the HTTP API (httpx + ASGI) over a real SQLite file.

Users and keys are made the way `ci-admin` makes them: with `accounts` on the same database
file, before the app starts or while it runs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message

from ci_server import accounts
from ci_server.app import create_app
from ci_server.runner.executor import OutputSink, RunSpec
from ci_server.settings import Settings
from ci_server.store.sqlite import SqliteStore
from ci_server.users import ANONYMOUS_ADMIN, parse_key
from tests.fakes import FakeExecutor, FakeRun, wait_until
from tests.integration.test_sqlite_api import (
    UNKNOWN_ID,
    finished,
    make_settings,
    parse_sse,
    serve,
    sse,
    submit,
)


@dataclass(frozen=True)
class Person:
    id: str
    email: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass(frozen=True)
class People:
    ann: Person
    bob: Person
    root: Person
    """An admin."""


async def add_person(settings: Settings, name: str, *, admin: bool = False) -> Person:
    async with SqliteStore(settings.db_path) as store:
        email = f"{name}@example.com"
        user = await accounts.create_user(store, name=name, email=email, is_admin=admin)
        _, _, key = await accounts.create_key(store, email=email, name="laptop")
    return Person(user.id, user.email, key)


def act_as(client: httpx.AsyncClient, person: Person) -> httpx.AsyncClient:
    """The client's later requests carry this person's key (for the shared helpers)."""
    client.headers.update(person.headers)
    return client


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, auth=True)


@pytest.fixture
async def client(settings: Settings, people: People) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings, FakeExecutor()) as client:
        yield client


# -- no key, or a bad one: 401 ----------------------------------------------------------------

ROUTES = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", f"/jobs/{UNKNOWN_ID}"),
    ("GET", f"/jobs/{UNKNOWN_ID}/tests"),
    ("GET", f"/jobs/{UNKNOWN_ID}/events"),
    ("POST", f"/jobs/{UNKNOWN_ID}/cancel"),
    ("GET", "/tests?project=app"),
    ("GET", "/jobs/not-a-job"),  # authentication comes before validation
]


def assert_401(response: httpx.Response, detail: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_but_health_needs_a_key(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    assert_401(await client.request(method, path), "no API key")
    assert (await client.get("/health")).status_code == 200


async def test_a_bad_key_is_401_saying_what_is_wrong(
    client: httpx.AsyncClient, people: People
) -> None:
    key_id, secret = parse_key(people.ann.key)
    cases = {
        "Basic YW5uOnNlY3JldA==": "the Authorization header must read `Bearer ci_...`",
        "Bearer": "the Authorization header must read `Bearer ci_...`",
        "Bearer not-a-key": "malformed API key",
        f"Bearer ci_{'0' * 12}_{secret}": "invalid API key",
        f"Bearer ci_{key_id}_{secret}x": "invalid API key",
    }
    for header, detail in cases.items():
        assert_401(await client.get("/jobs", headers={"Authorization": header}), detail)
    assert (await client.get("/jobs", headers=people.ann.headers)).status_code == 200


@pytest.mark.parametrize("authorization", [None, "Bearer ci_000000000000_wrong"])
async def test_an_upload_is_refused_before_its_body_is_read(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="archive"; filename="p.zip"\r\n\r\n'
        for _ in range(100):
            sent += 1
            yield b"x" * 65536
        yield b"\r\n--b--\r\n"

    headers = {"content-type": "multipart/form-data; boundary=b"}
    if authorization:
        headers["authorization"] = authorization
    response = await client.post("/jobs", content=body(), headers=headers)
    assert_401(response, "invalid API key" if authorization else "no API key")
    assert sent == 0  # not one chunk of the 6.5 MB was asked for


async def test_a_revoked_key_stops_working_at_once(
    client: httpx.AsyncClient, settings: Settings, people: People
) -> None:
    assert (await client.get("/jobs", headers=people.ann.headers)).status_code == 200
    key_id, _ = parse_key(people.ann.key)
    async with SqliteStore(settings.db_path) as admin_tool:  # as `ci-admin key revoke`
        await accounts.revoke_key(admin_tool, key_id)
    response = await client.get("/jobs", headers=people.ann.headers)
    assert_401(response, f"API key {key_id} (laptop) has been revoked")
    assert (await client.get("/jobs", headers=people.bob.headers)).status_code == 200


async def test_a_deactivated_users_keys_stop_working(
    client: httpx.AsyncClient, settings: Settings, people: People
) -> None:
    async with SqliteStore(settings.db_path) as admin_tool:
        await accounts.deactivate_user(admin_tool, people.bob.email)
    assert_401(
        await client.get("/jobs", headers=people.bob.headers),
        "bob@example.com has been deactivated",
    )


# -- a key that stops working closes the streams open with it -------------------------------


@dataclass
class OpenStream:
    """GET /jobs/{id}/events straight through the app's ASGI interface, so that the test
    sees each write of the stream as it happens (httpx's ASGI transport waits for the end)."""

    app: FastAPI
    job_id: str
    person: Person
    body: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        path = f"/jobs/{self.job_id}/events"
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"authorization", self.person.headers["Authorization"].encode())],
            "client": ("127.0.0.1", 50000),
            "server": ("ci.test", 80),
        }
        self.task = asyncio.create_task(self.app(scope, self._receive, self._send))

    async def _receive(self) -> Message:
        await asyncio.Event().wait()  # the client never goes away
        raise AssertionError("unreachable")

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.ended.set()

    async def closed(self, within: float) -> dict[str, Any]:
        """Wait for the stream to end; the data of its last event, `unauthorized`."""
        async with asyncio.timeout(within):
            await self.ended.wait()
        last = re.split(r"\r?\n\r?\n", self.body.decode().strip())[-1]
        lines = dict(line.split(": ", 1) for line in last.splitlines())
        assert lines["event"] == "unauthorized", last
        return json.loads(lines["data"])

    def events(self) -> list[str]:
        return [event.event for event in parse_sse(self.body.decode())]


@dataclass
class FloodingExecutor(FakeExecutor):
    """Prints as fast as the event loop lets it until `stop` is set."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        while not self.stop.is_set():
            on_output(b"flood\n" * 20)
            await asyncio.sleep(0.001)
        return 0


@asynccontextmanager
async def running_app(settings: Settings, executor: FakeExecutor) -> AsyncIterator[FastAPI]:
    app = create_app(settings, executor=executor)
    async with app.router.lifespan_context(app):
        yield app


async def revoke_anns_key(settings: Settings, people: People) -> str:
    key_id, _ = parse_key(people.ann.key)
    async with SqliteStore(settings.db_path) as admin_tool:  # as `ci-admin key revoke`
        await accounts.revoke_key(admin_tool, key_id)
    return f"API key {key_id} (laptop) has been revoked"


async def deactivate_ann(settings: Settings, people: People) -> str:
    async with SqliteStore(settings.db_path) as admin_tool:  # as `ci-admin user deactivate`
        await accounts.deactivate_user(admin_tool, people.ann.email)
    return "user ann@example.com has been deactivated"


LockOut = Callable[[Settings, People], Awaitable[str]]


@pytest.mark.parametrize("output", ["idle", "flood"])
@pytest.mark.parametrize(
    "lock_out", [revoke_anns_key, deactivate_ann], ids=["revoke", "deactivate"]
)
async def test_a_key_that_stops_working_ends_its_open_streams_within_seconds(
    settings: Settings, people: People, output: str, lock_out: LockOut
) -> None:
    gate = asyncio.Event()
    executor = FakeExecutor(FakeRun(gate=gate)) if output == "idle" else FloodingExecutor()
    async with running_app(settings, executor) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ci.test") as client:
            job_id = (await submit(act_as(client, people.ann))).json()["job_id"]
            anns, roots = OpenStream(app, job_id, people.ann), OpenStream(app, job_id, people.root)
            await wait_until(lambda: "running" in anns.body.decode(), what="ann's stream")
            if output == "flood":
                await wait_until(lambda: anns.body.count(b"flood") > 100, what="a flood")

            detail = await lock_out(settings, people)
            closing = await anns.closed(within=10)

            assert closing == {"status": 401, "detail": detail}
            assert roots.task.done() is False  # an admin's stream goes on, and so does the job
            job = (await client.get(f"/jobs/{job_id}", headers=people.root.headers)).json()
            assert job["status"] == "running"
            gate.set()
            if isinstance(executor, FloodingExecutor):
                executor.stop.set()
            async with asyncio.timeout(10):
                await roots.ended.wait()
            assert roots.events()[-1] == "end"


# -- a deactivated user's queued jobs are cancelled -------------------------------------------


@pytest.fixture
def gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def gated(gate: asyncio.Event) -> FakeExecutor:
    """Every job runs until the gate opens."""
    return FakeExecutor(FakeRun(gate=gate))


async def holding_the_worker(client: httpx.AsyncClient, people: People, ex: FakeExecutor) -> str:
    """An admin's job that the executor holds running: the next jobs wait in the queue."""
    job_id = (await submit(act_as(client, people.root))).json()["job_id"]
    await wait_until(lambda: ex.running == {job_id}, what="the first job running")
    return job_id


async def test_deactivating_a_user_cancels_their_queued_jobs_and_watchers_see_them_end(
    settings: Settings, people: People, gate: asyncio.Event, gated: FakeExecutor
) -> None:
    async with running_app(settings, gated) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ci.test") as client:
            running = await holding_the_worker(client, people, gated)
            anns = [(await submit(act_as(client, people.ann))).json()["job_id"] for _ in "ab"]
            bobs = (await submit(act_as(client, people.bob))).json()["job_id"]
            watcher = OpenStream(app, anns[0], people.root)
            await wait_until(lambda: b"queued" in watcher.body, what="the watcher attached")

            await deactivate_ann(settings, people)
            async with asyncio.timeout(10):
                await watcher.ended.wait()

            assert watcher.events()[-1] == "end"
            act_as(client, people.root)
            for job_id in anns:
                job = await finished(client, job_id)
                assert (job["status"], job["reason"]) == (
                    "cancelled",
                    "cancelled: owner deactivated",
                )
                assert job["start_time"] is None
            assert (await client.get(f"/jobs/{bobs}")).json()["status"] == "queued"
            gate.set()
            assert (await finished(client, bobs))["status"] == "succeeded"
            assert [spec.job_id for spec in gated.specs] == [running, bobs]


async def test_a_worker_does_not_start_a_job_whose_owner_was_just_deactivated(
    settings: Settings, people: People, gate: asyncio.Event, gated: FakeExecutor
) -> None:
    async with serve(settings, gated) as client:
        running = await holding_the_worker(client, people, gated)
        queued = (await submit(act_as(client, people.ann))).json()["job_id"]

        await deactivate_ann(settings, people)
        gate.set()  # the worker is free at once, long before the owners are looked up again

        job = await finished(act_as(client, people.root), queued)
        assert (job["status"], job["reason"]) == ("cancelled", "cancelled: owner deactivated")
        assert [spec.job_id for spec in gated.specs] == [running]


# -- a user's jobs are theirs -----------------------------------------------------------------


async def test_another_users_job_answers_exactly_like_an_unknown_one(
    client: httpx.AsyncClient, people: People
) -> None:
    job_id = (await submit(act_as(client, people.ann))).json()["job_id"]
    await finished(client, job_id)

    for path in ("", "/tests", "/events"):
        unknown = await client.get(f"/jobs/{UNKNOWN_ID}{path}", headers=people.bob.headers)
        theirs = await client.get(f"/jobs/{job_id}{path}", headers=people.bob.headers)
        assert (unknown.status_code, theirs.status_code) == (404, 404)
        assert unknown.json() == {"detail": f"no job with id {UNKNOWN_ID!r}"}
        assert theirs.json() == {"detail": f"no job with id {job_id!r}"}
        assert unknown.headers.keys() == theirs.headers.keys()
    bob_cancels = await client.post(f"/jobs/{job_id}/cancel", headers=people.bob.headers)
    assert (bob_cancels.status_code, bob_cancels.json()) == (
        404,
        {"detail": f"no job with id {job_id!r}"},
    )
    assert (await client.get(f"/jobs/{job_id}", headers=people.ann.headers)).status_code == 200


async def test_a_user_cannot_cancel_another_users_running_job(
    settings: Settings, people: People
) -> None:
    gate = asyncio.Event()
    executor = FakeExecutor(FakeRun(gate=gate))
    async with serve(settings, executor) as client:
        job_id = (await submit(act_as(client, people.ann))).json()["job_id"]
        response = await client.post(f"/jobs/{job_id}/cancel", headers=people.bob.headers)
        assert response.status_code == 404
        assert executor.cancelled == []
        shown = await client.get(f"/jobs/{job_id}", headers=people.ann.headers)
        assert shown.json()["status"] in ("queued", "running")

        response = await client.post(f"/jobs/{job_id}/cancel", headers=people.ann.headers)
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"


async def test_lists_show_a_user_their_own_jobs_and_an_admin_all(
    client: httpx.AsyncClient, people: People
) -> None:
    owners = [people.ann, people.bob, people.ann, people.root, people.bob, people.ann]
    ids = [(await submit(act_as(client, owner))).json()["job_id"] for owner in owners]
    for job_id in ids:
        await finished(act_as(client, people.root), job_id)

    def listed(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [job["job_id"] for job in response.json()]

    newest_first = list(reversed(list(zip(ids, owners, strict=True))))
    for person in (people.ann, people.bob):
        own = [job_id for job_id, owner in newest_first if owner == person]
        assert listed(await client.get("/jobs", headers=person.headers)) == own
        # Paging within their own jobs; another's job as the cursor is unknown to them.
        page = await client.get(
            "/jobs", params={"limit": 1, "before": own[0]}, headers=person.headers
        )
        assert listed(page) == own[1:2]
    annes_job = next(job_id for job_id, owner in newest_first if owner == people.ann)
    foreign = await client.get("/jobs", params={"before": annes_job}, headers=people.bob.headers)
    assert foreign.status_code == 404

    everything = await client.get("/jobs", headers=people.root.headers)
    assert listed(everything) == [job_id for job_id, _ in newest_first]
    owner_ids = {job["job_id"]: job["owner_id"] for job in everything.json()}
    assert owner_ids == {job_id: owner.id for job_id, owner in zip(ids, owners, strict=True)}


async def test_an_admin_may_see_and_cancel_any_job(settings: Settings, people: People) -> None:
    async with serve(settings, FakeExecutor(FakeRun(gate=asyncio.Event()))) as client:
        job_id = (await submit(act_as(client, people.ann))).json()["job_id"]
        shown = await client.get(f"/jobs/{job_id}", headers=people.root.headers)
        assert shown.json()["owner_id"] == people.ann.id
        cancelled = await client.post(f"/jobs/{job_id}/cancel", headers=people.root.headers)
        assert cancelled.json()["status"] == "cancelled"
        events = await sse(client, job_id, headers=people.root.headers)
        assert events[-1].data["status"] == "cancelled"


# -- without authentication -------------------------------------------------------------------


async def test_with_auth_off_every_request_is_the_anonymous_admin(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth=False)
    async with serve(settings, FakeExecutor()) as client:
        job = (await submit(client)).json()
        assert job["owner_id"] == ANONYMOUS_ADMIN.id
        await finished(client, job["job_id"])
        listed = await client.get("/jobs", headers={"Authorization": "Bearer whatever"})
        assert [j["job_id"] for j in listed.json()] == [job["job_id"]]
