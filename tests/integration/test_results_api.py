"""GET /jobs/{id}/tests over a real SQLite file: pages, keyset, outcome filter; the summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.fakes import FakeExecutor, FakeRun
from tests.integration.test_sqlite_api import finished, make_settings, serve, submit

CASES = 2500
FAILED_EVERY = 7


def report() -> str:
    """CASES tests, every FAILED_EVERY-th failing, the others passing or xfailed."""
    cases = []
    for n in range(CASES):
        inside = ""
        if n % FAILED_EVERY == 0:
            inside = f'<failure message="boom {n}">E   assert {n} == 0</failure>'
        elif n % 2:
            inside = '<skipped type="pytest.xfail" message="known" />'
        cases.append(f'<testcase classname="t" name="test_{n}" file="t.py">{inside}</testcase>')
    return f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>"


async def pages(
    client: httpx.AsyncClient, job_id: str, **params: Any
) -> list[list[dict[str, Any]]]:
    """Every page, following `after` until a short page."""
    collected: list[list[dict[str, Any]]] = []
    limit = params.get("limit", 500)
    while True:
        response = await client.get(f"/jobs/{job_id}/tests", params=params)
        assert response.status_code == 200, response.text
        collected.append(response.json())
        if len(collected[-1]) < limit:
            return collected
        params["after"] = collected[-1][-1]["position"]


async def test_results_come_in_pages_of_limit_following_the_last_position(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor(FakeRun(exit_code=1, report=report()))
    async with serve(make_settings(tmp_path), executor) as client:
        job_id = (await submit(client)).json()["job_id"]
        job = await finished(client, job_id)

        everything = await pages(client, job_id)
        failures = await pages(client, job_id, outcome="failed", limit=100)
        several = await client.get(
            f"/jobs/{job_id}/tests", params={"outcome": ["failed", "xfailed"], "limit": 1000}
        )
        too_many = await client.get(f"/jobs/{job_id}/tests", params={"limit": 1001})
        bad_outcome = await client.get(f"/jobs/{job_id}/tests", params={"outcome": "great"})

    failed = len(range(0, CASES, FAILED_EVERY))
    xfailed = sum(1 for n in range(1, CASES, 2) if n % FAILED_EVERY)
    assert job["summary"] == {
        "passed": CASES - failed - xfailed,
        "failed": failed,
        "errors": 0,
        "skipped": 0,
        "xfailed": xfailed,
        "xpassed": 0,
        "rerun": 0,
        "flaky": 0,
        "total": CASES,
        "results_kept": None,
        "warning": None,
        "collected": None,  # only a shard says what it collected
        "collected_sha256": None,
    }
    assert [len(page) for page in everything] == [500, 500, 500, 500, 500, 0]
    results = [result for page in everything for result in page]
    assert [r["position"] for r in results] == list(range(CASES))
    assert results[7] == {
        "position": 7,
        "node_id": "t.py::test_7",
        "outcome": "failed",
        "duration_seconds": 0.0,
        "message": "boom 7",
        "details": "E   assert 7 == 0",
    }
    assert [len(page) for page in failures] == [100, 100, 100, failed - 300]
    assert [r["position"] for page in failures for r in page] == list(range(0, CASES, 7))
    assert {r["outcome"] for r in several.json()} == {"failed", "xfailed"}
    assert too_many.status_code == 422
    assert bad_outcome.status_code == 422
