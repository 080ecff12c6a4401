"""Job groups through the HTTP API over a real SQLite file: one submission made into a job
per (Python version x shard), shown, listed, cancelled as one; refusals before anything is
kept; another user's group unknown."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from ci_server.contents import is_upload_key
from ci_server.runner.executor import OutputSink, RunSpec
from ci_server.settings import Settings
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun, wait_until
from tests.integration.test_auth_api import act_as, add_person
from tests.integration.test_sqlite_api import TERMINAL, finished, make_settings, serve, submit

IMAGES = "3.11=runner:test,3.12=runner:test"


def report(passed: int, failed: int = 0) -> str:
    cases = [f'<testcase classname="t" name="test_ok_{n}" file="t.py" />' for n in range(passed)]
    cases += [
        f'<testcase classname="t" name="test_bad_{n}" file="t.py">'
        f'<failure message="boom">E   assert 0</failure></testcase>'
        for n in range(failed)
    ]
    return f"<testsuites><testsuite>{''.join(cases)}</testsuite></testsuites>"


class InTurn(FakeExecutor):
    """Plays `plans` in turn, a test run each (then `plan`)."""

    def __init__(self, *plans: FakeRun) -> None:
        super().__init__()
        self.plans = list(plans)

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        if self.plans:
            self.plan = self.plans.pop(0)
        return await super().run(spec, on_output)


def group_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path, python_images=IMAGES, **overrides)


async def group_ended(client: httpx.AsyncClient, group_id: str) -> dict[str, Any]:
    latest: dict[str, Any] = {}

    async def done() -> bool:
        nonlocal latest
        response = await client.get(f"/groups/{group_id}")
        assert response.status_code == 200, response.text
        latest = response.json()
        return latest["status"] in TERMINAL

    await wait_until(done, what=f"group {group_id} to end", within=15, interval=0.05)
    return latest


def blobs(settings: Settings) -> list[str]:
    folder = settings.resolved_data_dir / "blobs"
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


async def test_python_versions_make_a_group_whose_status_is_its_worst_job(
    tmp_path: Path,
) -> None:
    settings = group_settings(tmp_path)
    executor = InTurn(
        FakeRun(exit_code=0, report=report(3)), FakeRun(exit_code=1, report=report(2, 1))
    )
    async with serve(settings, executor) as client:
        response = await submit(client, python=["3.12", "3.11"])
        assert response.status_code == 201, response.text
        submitted = response.json()
        group_id = submitted["group_id"]
        assert group_id.startswith("g-") and len(group_id) == 14
        assert [job["label"] for job in submitted["jobs"]] == ["py3.11", "py3.12"]
        assert {job["group_id"] for job in submitted["jobs"]} == {group_id}

        group = await group_ended(client, group_id)
        job_ids = [job["job_id"] for job in group["jobs"]]
        one = (await client.get(f"/jobs/{job_ids[0]}")).json()
        stored = blobs(settings)

    assert (group["status"], group["success"]) == ("failed", False)
    assert sorted(job["status"] for job in group["jobs"]) == ["failed", "succeeded"]
    assert group["summary"]["passed"] == 5
    assert group["summary"]["failed"] == 1
    assert group["summary"]["total"] == 6
    assert group["project"] == submitted["project"]
    assert (one["group_id"], one["python"], one["label"]) == (group_id, "3.11", "py3.11")
    # The shared upload went with the group's last job (the jobs' artifacts stay).
    assert [key for key in stored if is_upload_key(key)] == []


async def test_shards_from_ci_toml_times_versions(tmp_path: Path) -> None:
    async with serve(group_settings(tmp_path), FakeExecutor()) as client:
        from_file = await submit(client, {**PASSING_PROJECT, "ci.toml": "shards = 3\n"})
        both = await submit(client, python=["3.11", "3.12"], shards="2")
        overridden = await submit(client, {**PASSING_PROJECT, "ci.toml": "shards = 3\n"}, shards=1)
        for response in (from_file, both):
            await group_ended(client, response.json()["group_id"])

    assert [job["label"] for job in from_file.json()["jobs"]] == ["1/3", "2/3", "3/3"]
    assert [(job["shard_index"], job["shard_count"]) for job in from_file.json()["jobs"]] == [
        (1, 3),
        (2, 3),
        (3, 3),
    ]
    assert [job["label"] for job in both.json()["jobs"]] == [
        "py3.11 1/2",
        "py3.11 2/2",
        "py3.12 1/2",
        "py3.12 2/2",
    ]
    assert "jobs" not in overridden.json()  # one shard: a lone job


async def test_a_plain_submission_is_one_job_without_a_group(tmp_path: Path) -> None:
    async with serve(group_settings(tmp_path), FakeExecutor()) as client:
        job = (await submit(client)).json()
        versioned = (await submit(client, python="3.12")).json()
    assert (job["group_id"], job["python"], job["label"]) == (None, None, "")
    assert (versioned["group_id"], versioned["python"], versioned["label"]) == (
        None,
        "3.12",
        "py3.12",
    )


@pytest.mark.parametrize(
    ("form", "files", "message"),
    [
        (
            {"python": ["3.11", "3.7"]},
            {},
            "unknown Python version(s) '3.7': this server offers 3.11, 3.12 (CI_PYTHON_IMAGES)",
        ),
        ({}, {"ci.toml": 'python = ["2.7"]\n'}, "unknown Python version(s) '2.7'"),
        (
            {"python": ["3.11", "3.12"], "shards": "9"},
            {},
            "18 jobs asked (2 Python version(s) "
            "x 9 shard(s)); this server runs at most 16 per submission",
        ),
    ],
)
async def test_what_cannot_be_run_is_refused_before_anything_is_kept(
    tmp_path: Path, form: dict[str, Any], files: dict[str, str], message: str
) -> None:
    settings = group_settings(tmp_path)
    async with serve(settings, FakeExecutor()) as client:
        response = await submit(client, {**PASSING_PROJECT, **files}, **form)
        listed = (await client.get("/jobs")).json()
    assert response.status_code == 400
    assert response.json()["detail"].startswith(message)
    assert listed == []
    assert blobs(settings) == []


async def test_cancelling_a_group_cancels_its_queued_and_running_jobs(tmp_path: Path) -> None:
    executor = FakeExecutor(FakeRun(gate=asyncio.Event()))
    async with serve(group_settings(tmp_path), executor) as client:
        group = (await submit(client, shards="3")).json()
        await wait_until(lambda: bool(executor.running), what="a job of the group running")
        cancelled = await client.post(f"/groups/{group['group_id']}/cancel")
        again = await client.post(f"/groups/{group['group_id']}/cancel")

    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert [job["status"] for job in cancelled.json()["jobs"]] == ["cancelled"] * 3
    assert len(executor.cancelled) == 1  # the running one, stopped by its worker
    assert again.status_code == 409
    assert "already finished" in again.json()["detail"]


async def test_a_grouped_listing_shows_a_group_as_one_item_and_pages_past_it(
    tmp_path: Path,
) -> None:
    async with serve(group_settings(tmp_path), FakeExecutor()) as client:
        first = (await submit(client)).json()["job_id"]
        group = (await submit(client, shards="4")).json()["group_id"]
        last = (await submit(client)).json()["job_id"]
        await group_ended(client, group)

        grouped = (await client.get("/jobs", params={"grouped": True})).json()
        page = (await client.get("/jobs", params={"grouped": True, "limit": 2})).json()
        after = (
            await client.get("/jobs", params={"grouped": True, "limit": 2, "before": group})
        ).json()
        flat = (await client.get("/jobs")).json()

    def ids(items: list[dict[str, Any]]) -> list[str]:
        return [item["group_id"] if "jobs" in item else item["job_id"] for item in items]

    assert ids(grouped) == [last, group, first]
    assert len(grouped[1]["jobs"]) == 4
    assert ids(page) == [last, group]
    assert ids(after) == [first]
    assert len(flat) == 6 and all("jobs" not in job for job in flat)


async def test_another_user_s_group_is_not_found(tmp_path: Path) -> None:
    settings = group_settings(tmp_path, auth=True)
    async with serve(settings, FakeExecutor()) as client:
        ann, bob = await add_person(settings, "ann"), await add_person(settings, "bob")
        group = (await submit(act_as(client, ann), shards="2")).json()["group_id"]
        await group_ended(client, group)
        act_as(client, bob)
        shown = await client.get(f"/groups/{group}")
        cancel = await client.post(f"/groups/{group}/cancel")
        unknown = await client.get("/groups/g-0123456789ab")
        listed = (await client.get("/jobs", params={"grouped": True})).json()
        paged = await client.get("/jobs", params={"grouped": True, "before": group})
        malformed = await client.get("/groups/0123456789ab")

    assert shown.status_code == cancel.status_code == unknown.status_code == 404
    assert shown.json()["detail"] == f"no group with id {group!r}"
    assert paged.status_code == 404
    assert listed == []
    assert malformed.status_code == 422


@pytest.mark.parametrize(
    ("form", "status"),
    [
        ({"shards": "0"}, 422),
        ({"shards": "-3"}, 422),
        ({"shards": "1.5"}, 422),
        ({"shards": "9" * 5000}, 422),
        ({"shards": "1" + "0" * 30}, 400),
        ({"python": [f"9.{n}" + "x" * 1000 for n in range(900)]}, 400),
        ({"python": ["3.11,3.12", "\0", "3.11\n"]}, 400),
    ],
    ids=["zero", "negative", "fraction", "5000-digits", "10^30", "900-long-versions", "odd"],
)
async def test_hostile_shards_and_versions_are_refused_briefly(
    tmp_path: Path, form: dict[str, Any], status: int
) -> None:
    settings = group_settings(tmp_path)
    async with serve(settings, FakeExecutor()) as client:
        response = await submit(client, **form)
        listed = (await client.get("/jobs")).json()
    assert response.status_code == status, response.text
    assert len(response.text) < 6000  # not the thousand versions sent back (a megabyte)
    assert listed == []
    assert blobs(settings) == []


async def test_many_copies_of_one_version_make_one_job_and_a_bad_ci_toml_fails_its_job(
    tmp_path: Path,
) -> None:
    async with serve(group_settings(tmp_path), FakeExecutor()) as client:
        copies = await submit(client, python=["3.11", " 3.11 "] * 500)
        zero = await submit(client, {**PASSING_PROJECT, "ci.toml": "shards = 0\n"})
        truth = await submit(client, {**PASSING_PROJECT, "ci.toml": "shards = true\n"})
        ended = [await finished(client, r.json()["job_id"]) for r in (zero, truth)]

    assert copies.status_code == 201 and "jobs" not in copies.json()
    assert copies.json()["python"] == "3.11"
    assert [job["status"] for job in ended] == ["failed", "failed"]
    assert all("shards" in job["reason"] for job in ended), ended
