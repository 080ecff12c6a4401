"""GET /tests?project=: each test's latest outcomes in one of the user's projects, over a
real SQLite file, with users made as `ci-admin` makes them."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.fakes import FakeExecutor, FakeRun
from tests.integration.test_auth_api import People, act_as, add_person
from tests.integration.test_sqlite_api import finished, make_settings, serve, submit


def report(**outcomes: bool) -> str:
    """A JUnit report of tests named by `outcomes`' keys, failing where the value is False."""
    cases = "".join(
        f'<testcase classname="t" name="{name}" file="t.py" time="0.5">'
        + ("" if passed else '<failure message="boom">E   boom</failure>')
        + "</testcase>"
        for name, passed in outcomes.items()
    )
    return f"<testsuites><testsuite>{cases}</testsuite></testsuites>"


async def run(client: httpx.AsyncClient, executor: FakeExecutor, **outcomes: bool) -> str:
    executor.plan = FakeRun(exit_code=0 if all(outcomes.values()) else 1, report=report(**outcomes))
    job_id = (await submit(client, project="app")).json()["job_id"]
    await finished(client, job_id)
    return job_id


async def test_a_user_sees_the_history_of_their_own_project_only(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, auth=True)
    people = People(
        ann=await add_person(settings, "ann"),
        bob=await add_person(settings, "bob"),
        root=await add_person(settings, "root", admin=True),
    )
    executor = FakeExecutor()
    async with serve(settings, executor) as client:
        act_as(client, people.ann)
        first = await run(client, executor, test_a=True, test_b=False)
        second = await run(client, executor, test_a=True, test_b=True)
        ann = (await client.get("/tests", params={"project": "app"})).json()
        act_as(client, people.bob)
        bobs_run = await run(client, executor, test_a=False)
        bob = (await client.get("/tests", params={"project": "app", "runs": 1})).json()
        act_as(client, people.root)
        root = await client.get("/tests", params={"project": "app"})
        no_project = await client.get("/tests")
        too_many_runs = await client.get("/tests", params={"project": "app", "runs": 101})

    # Both of ann's jobs tested the same upload in the same environment: one content hash,
    # so test_b, which passed and failed on it, is flaky.
    tested = ann[0]["runs"][0]["content_hash"]
    assert tested is not None
    assert ann == [
        {
            "node_id": "t.py::test_a",
            "runs": [
                {
                    "job_id": second,
                    "outcome": "passed",
                    "duration_seconds": 0.5,
                    "content_hash": tested,
                },
                {
                    "job_id": first,
                    "outcome": "passed",
                    "duration_seconds": 0.5,
                    "content_hash": tested,
                },
            ],
            "failure_rate": 0.0,
            "median_duration": 0.5,
            "flaky_runs": 0,
            "runs_on_flaky_content": 0,
            "failures_on_flaky_content": 0,
            "flake_rate": 0.0,
        },
        {
            "node_id": "t.py::test_b",
            "runs": [
                {
                    "job_id": second,
                    "outcome": "passed",
                    "duration_seconds": 0.5,
                    "content_hash": tested,
                },
                {
                    "job_id": first,
                    "outcome": "failed",
                    "duration_seconds": 0.5,
                    "content_hash": tested,
                },
            ],
            "failure_rate": 0.5,
            "median_duration": 0.5,
            "flaky_runs": 1,
            "runs_on_flaky_content": 2,
            "failures_on_flaky_content": 1,
            "flake_rate": 0.5,
        },
    ]
    assert [(test["node_id"], [r["job_id"] for r in test["runs"]]) for test in bob] == [
        ("t.py::test_a", [bobs_run])
    ]
    assert root.status_code == 200 and root.json() == []  # an admin's projects are their own
    assert no_project.status_code == too_many_runs.status_code == 422
