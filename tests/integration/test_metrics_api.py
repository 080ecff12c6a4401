"""GET /metrics through the HTTP API (httpx + ASGI) over a real SQLite file, with the fake
executor: who may read it, and what moves when jobs run (with real Docker: e2e)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ci_server.settings import Settings
from tests.fakes import FakeExecutor, FakeRun, wait_until
from tests.integration.test_auth_api import People
from tests.integration.test_sqlite_api import finished, make_settings, serve, submit

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, auth=True)


@pytest.fixture
async def client(settings: Settings, people: People) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings, FakeExecutor()) as client:
        yield client


async def test_only_an_admin_reads_the_metrics(client: httpx.AsyncClient, people: People) -> None:
    anonymous = await client.get("/metrics")
    assert anonymous.status_code == 401
    user = await client.get("/metrics", headers=people.ann.headers)
    assert user.status_code == 403
    assert user.json() == {
        "detail": "only an admin may read /metrics (or set CI_METRICS_PUBLIC=true)"
    }
    await scrape(client, **people.root.headers)


async def test_public_metrics_need_no_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth=True, metrics_public=True)
    async with serve(settings, FakeExecutor()) as client:
        scraped = await scrape(client)
    assert value(scraped, "ci_jobs_queued") == 0


async def test_jobs_builds_events_and_requests_are_counted(
    client: httpx.AsyncClient, people: People
) -> None:
    client.headers.update(people.root.headers)
    before = await scrape(client)
    assert value(before, "ci_jobs_total", status="succeeded") == 0
    for _ in range(2):  # the first builds the environment, the second reuses it
        job = (await submit(client)).json()
        assert (await finished(client, job["job_id"]))["status"] == "succeeded"
    await client.get("/no/such/page")

    after = await scrape(client)
    assert value(after, "ci_jobs_total", status="succeeded") == 2
    assert value(after, "ci_jobs_total", status="failed") == 0
    assert value(after, "ci_job_duration_seconds_count") == 2
    assert value(after, "ci_job_queue_seconds_count") == 2
    assert value(after, "ci_environment_builds_total", result="succeeded") == 1
    assert value(after, "ci_environment_cache_hits_total") == 1
    assert value(after, "ci_events_total", type="end") == 2
    assert value(after, "ci_events_total", type="log") > 2
    requests = "ci_http_requests_total"
    assert value(after, requests, method="POST", route="/jobs", status="201") == 2
    assert value(after, requests, method="GET", route="/jobs/{job_id}", status="200") >= 2
    assert value(after, requests, method="GET", route="unmatched", status="404") == 1
    assert value(after, requests, method="GET", route="/metrics", status="200") == 1
    assert not [labels for name, labels in after if ("route", "/no/such/page") in labels]


async def test_a_refused_upload_is_counted_under_its_route(
    client: httpx.AsyncClient, people: People
) -> None:
    assert (await submit(client)).status_code == 401  # refused before routing
    scraped = await scrape(client, **people.root.headers)
    assert value(scraped, "ci_http_requests_total", method="POST", route="/jobs", status="401") == 1


async def test_the_queue_gauges_are_counted_in_the_store(
    settings: Settings, people: People
) -> None:
    gate = asyncio.Event()
    executor = FakeExecutor(FakeRun(gate=gate))
    async with serve(settings, executor) as client:
        client.headers.update(people.root.headers)
        first, second = [(await submit(client)).json()["job_id"] for _ in range(2)]

        async def one_running_one_queued() -> bool:
            scraped = await scrape(client)
            return (value(scraped, "ci_jobs_running"), value(scraped, "ci_jobs_queued")) == (1, 1)

        await wait_until(one_running_one_queued, what="one job running, one queued")
        gate.set()
        for job_id in (first, second):
            await finished(client, job_id)
        scraped = await scrape(client)
        assert (value(scraped, "ci_jobs_running"), value(scraped, "ci_jobs_queued")) == (0, 0)
