"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis), and
what the schema cannot say: unknown query parameters, huge headers, wrong methods.

The app runs in-process over a real SQLite file with the FakeExecutor (no Docker). With a
valid key, every operation gets generated requests, valid and invalid, some of them aimed
at real jobs and real archives; without a key, every one but /health must answer 401. No
request may produce a 5xx, and every answer must be one the schema documents, in the
documented shape. Generation is deterministic (`derandomize`): a failure here is the same
failure in CI, and the run takes about 15 s.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from ci_common.trees import BATCH_MEDIA_TYPE
from ci_server.api.jobs import JOB_ID_PATTERN
from ci_server.app import create_app
from ci_server.settings import Settings
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun
from tests.integration.test_auth_api import Person, act_as, add_person
from tests.integration.test_sqlite_api import (
    UNKNOWN_ID,
    finished,
    make_settings,
    serve,
    submit,
    zip_bytes,
)

EXAMPLES = 100
"""Per operation and run (9 operations, 2 runs)."""
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
RESPONSE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
]
"""What every answer is held to. Not the checks of what the server accepts: unknown query
parameters are ignored on purpose (`negative_data_rejection` wants them refused), and
FastAPI writes an optional header as nullable, which schemathesis then sends as the text
`null` (`positive_data_acceptance` wants it accepted)."""


@dataclass(frozen=True)
class Fuzzed:
    """The fuzzer's user and the jobs it may aim at, made before the fuzzed app starts."""

    settings: Settings
    me: Person
    my_job: str
    """A finished job of the fuzzer's."""
    their_job: str
    """A finished job of another user: must look unknown."""


async def _seed(settings: Settings) -> Fuzzed:
    me = await add_person(settings, "fuzzer")
    other = await add_person(settings, "other")
    async with serve(settings, FakeExecutor()) as client:
        jobs: list[str] = []
        for person in (me, other):
            response = await submit(act_as(client, person))
            assert response.status_code == 201, response.text
            jobs.append(response.json()["job_id"])
            await finished(client, jobs[-1])
    return Fuzzed(settings, me, jobs[0], jobs[1])


@pytest.fixture
def fuzzed(tmp_path: Path) -> Fuzzed:
    # Sync on purpose: schemathesis runs the app (and its lifespan) on its own event loop.
    return asyncio.run(_seed(make_settings(tmp_path, auth=True)))


@pytest.fixture
def api_schema(fuzzed: Fuzzed) -> Any:
    app = create_app(fuzzed.settings, executor=FakeExecutor())
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@schemathesis.serializer(BATCH_MEDIA_TYPE)
def _raw_batch(ctx: object, value: object) -> bytes:
    """A batch of contents as sent: any bytes (mostly not zstd, which the server refuses)."""
    return value if isinstance(value, bytes) else str(value).encode()


schema = schemathesis.pytest.from_fixture("api_schema")


def aim(case: schemathesis.Case, at: str, fuzzed: Fuzzed) -> None:
    """Point a generated request at real things: a valid job id at a real job (the
    fuzzer's or another user's), an upload's archive at a real project (so that the other
    form fields get as far as a job)."""
    if at == "generated":
        return
    parameters = case.path_parameters or {}
    job_id = parameters.get("job_id")
    if isinstance(job_id, str) and re.fullmatch(JOB_ID_PATTERN, job_id):
        aimed = fuzzed.my_job if at == "mine" else fuzzed.their_job
        case.path_parameters = {**parameters, "job_id": aimed}
    if isinstance(case.body, dict) and "archive" in case.body:
        body: dict[str, Any] = {**case.body, "archive": zip_bytes(PASSING_PROJECT)}
        case.body = body


@schema.parametrize()
@schema.given(at=st.sampled_from(["generated", "mine", "theirs"]))
@FUZZ_SETTINGS
def test_fuzzed_requests_with_a_key_get_documented_answers(
    case: schemathesis.Case, at: str, fuzzed: Fuzzed
) -> None:
    """Never a 5xx; and `ignored_auth` replays each accepted request without the key."""
    aim(case, at, fuzzed)
    case.call_and_validate(headers=fuzzed.me.headers, checks=[*RESPONSE_CHECKS, ignored_auth])


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_request_without_a_key_is_401(case: schemathesis.Case) -> None:
    response = case.call_and_validate(checks=RESPONSE_CHECKS)
    if case.method.upper() != case.operation.method.upper():
        assert response.status_code == 405, response.text  # routing comes first
    elif case.operation.path == "/health":
        assert response.status_code == 200
    else:
        assert response.status_code == 401, response.text


# -- what the schema cannot say -----------------------------------------------------------


@pytest.fixture
async def person(tmp_path: Path) -> Person:
    return await add_person(make_settings(tmp_path, auth=True), "ann")


@pytest.fixture
async def client(tmp_path: Path, person: Person) -> AsyncIterator[httpx.AsyncClient]:
    executor = FakeExecutor(FakeRun(gate=asyncio.Event()))  # jobs run until the test ends
    async with serve(make_settings(tmp_path, auth=True), executor) as client:
        yield act_as(client, person)


async def test_unknown_query_parameters_are_ignored(client: httpx.AsyncClient) -> None:
    job_id = (await submit(client)).json()["job_id"]
    noise = {"verbose": "1", "": "empty", "limit[]": "x", "__proto__": "{}", "job_id": "../x"}
    plain = await client.get("/jobs", params={"limit": 5})
    noisy = await client.get("/jobs", params={"limit": 5, **noise})
    assert noisy.status_code == 200, noisy.text
    assert [job["job_id"] for job in noisy.json()] == [job["job_id"] for job in plain.json()]
    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/tests", "/health"):
        assert (await client.get(path, params=noise)).status_code == 200
    assert (await client.post(f"/jobs/{job_id}/cancel", params=noise)).status_code == 200


async def test_a_100_kb_header_is_not_a_server_error(client: httpx.AsyncClient) -> None:
    """In-process, past any HTTP server's header limit (e2e: uvicorn answers 431 first)."""
    huge = "x" * 100_000
    assert (await client.get("/jobs", headers={"X-Padding": huge})).status_code == 200
    refused = await client.get("/jobs", headers={"Authorization": f"Bearer ci_{huge}"})
    assert refused.status_code == 401
    assert len(refused.text) < 200  # the answer does not echo the header back
    upload = await client.post("/jobs", headers={"Authorization": f"Bearer {huge}"})
    assert upload.status_code == 401


@pytest.mark.parametrize("where", ["after", "Last-Event-ID"])
async def test_a_resume_point_past_any_seq_is_422_not_a_crash(
    client: httpx.AsyncClient, where: str
) -> None:
    """Seqs are SQLite integers (at most 2**63 - 1); a live job's stream reads the store
    from the resume point, so a bigger one must be refused before it gets there."""
    job_id = (await submit(client)).json()["job_id"]
    too_big = str(2**63)
    if where == "after":
        response = await client.get(f"/jobs/{job_id}/events", params={"after": too_big})
    else:
        response = await client.get(f"/jobs/{job_id}/events", headers={where: too_big})
    assert response.status_code == 422, response.text
    assert "9223372036854775807" in response.text


async def test_a_wrong_method_is_405_naming_every_allowed_one(client: httpx.AsyncClient) -> None:
    for method, path, allowed in [
        ("DELETE", "/jobs", "GET, POST"),
        ("PUT", f"/jobs/{UNKNOWN_ID}", "GET"),
        ("GET", f"/jobs/{UNKNOWN_ID}/cancel", "POST"),
        ("POST", "/health", "GET"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed, (method, path)
