"""Jobs of a group as the pipeline runs them (fake executor): a Python version's image, a
shard's inputs (the plugin and the recorded durations)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ci_server.models import COLLECTION_NOT_SAID, Job, JobStatus
from ci_server.runner.executor import INPUT_DIR
from ci_server.worker.loop import Worker
from tests.fakes import FakeExecutor, FakeRun
from tests.unit.one_process import IMAGE, Harness, harness

PYTHON_IMAGES = "3.11=runner:py311,3.13=runner:py313"
REPORT = """<testsuites><testsuite name="pytest" tests="3">
<testcase file="test_sample.py" classname="test_sample" name="test_slow" time="4.5"/>
<testcase file="test_sample.py" classname="test_sample" name="test_quick" time="0.25"/>
<testcase file="test_other.py" classname="test_other" name="test_x" time="1.0"/>
</testsuite></testsuites>"""


@asynccontextmanager
async def variants(tmp_path: Path, executor: FakeExecutor) -> AsyncIterator[Harness]:
    """A process whose worker starts only when `run` is called: jobs get their group's
    fields (what a group's submission sets) before any worker sees them."""
    async with harness(
        tmp_path, executor, worker=False, allowed_images="", python_images=PYTHON_IMAGES
    ) as h:
        yield h


async def run(h: Harness, **fields: Any) -> Job:
    """Submit a job with `fields` set, run it to its end; the job as stored."""
    submitted = await h.submit(project="app")
    job = submitted.replace(**fields)
    assert await h.store.update_job(job, expected=JobStatus.QUEUED)
    settings = h.service.settings
    async with Worker(h.store, h.hub, h.executor, h.blobs, settings):
        return await h.finished(job.id)


async def test_a_python_version_runs_in_its_image(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with variants(tmp_path, executor) as h:
        job = await run(h, python="3.13")
        assert job.status is JobStatus.SUCCEEDED
        [build] = executor.builds
        assert build.spec.image == "runner:py313"
        [spec] = executor.specs
        assert 'echo "==> $(python --version 2>&1)"' in spec.script

        await run(h, python="3.11")
        assert [b.spec.image for b in executor.builds] == ["runner:py313", "runner:py311"]
        # Two environments, one per base image: the versions never share one.
        assert executor.builds[0].tag != executor.builds[1].tag
        await run(h)
        assert executor.builds[-1].spec.image == IMAGE


async def test_an_unknown_python_version_fails_before_anything_runs(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with variants(tmp_path, executor) as h:
        job = await run(h, python="3.9")
        assert job.status is JobStatus.FAILED
        assert job.reason == "Python 3.9 is not one this server runs (CI_PYTHON_IMAGES: 3.11, 3.13)"
        assert executor.builds == [] and executor.specs == []


async def test_a_shard_gets_the_plugin_and_the_projects_recorded_durations(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor(FakeRun(report=REPORT))
    async with variants(tmp_path, executor) as h:
        first = await run(h, shard_index=1, shard_count=2)
        shard = json.loads(executor.inputs_seen[first.id]["shard.json"])
        assert shard == {
            "index": 1,
            "count": 2,
            "durations": {},
            "collected": "/ci-output/collected.json",
        }
        [spec] = executor.specs
        assert f"-p ci_shard --ci-shard={INPUT_DIR}/shard.json" in spec.script
        assert "ci_shard.py" in executor.inputs_seen[first.id]

        second = await run(h, shard_index=2, shard_count=2)
        shard = json.loads(executor.inputs_seen[second.id]["shard.json"])
        assert shard["index"] == 2
        assert shard["durations"] == {
            "test_sample.py::test_slow": 4.5,
            "test_sample.py::test_quick": 0.25,
            "test_other.py::test_x": 1.0,
        }
        events = await h.events_until_end(second.id)
        said = [e.data["text"] for e in events if e.data.get("stream") == "system"]
        assert "Shard 2 of 2: the tests are split by the recorded durations of 3 tests" in said


async def test_a_job_that_is_no_shard_gets_no_inputs(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with variants(tmp_path, executor) as h:
        await run(h)
        [spec] = executor.specs
        assert spec.inputs is None
        assert "ci_shard" not in spec.script


async def test_a_shard_keeps_what_it_says_it_collected(tmp_path: Path) -> None:
    said = json.dumps({"tests": 40, "sha256": "ab" * 32})
    executor = FakeExecutor(FakeRun(report=REPORT, collected=said))
    async with variants(tmp_path, executor) as h:
        job = await run(h, shard_index=1, shard_count=2)
        assert job.summary is not None
        assert (job.summary.collected, job.summary.collected_sha256) == (40, "ab" * 32)
        events = await h.events_until_end(job.id)
        logged = [e.data["text"] for e in events if e.data.get("stream") == "system"]
        assert (
            "Shard 1 of 2 collected 40 tests (SHA-256 of their ids abababababababab...): "
            "every shard of its group must say the same" in logged
        )


@pytest.mark.parametrize(
    ("collected", "why"),
    [
        (None, "it left none"),
        ("{not json", "it is not JSON"),
        ("[1, 2]", "it is not the plugin's"),
        (json.dumps({"tests": True, "sha256": "ab" * 32}), "its count of tests is not one"),
        (json.dumps({"tests": -1, "sha256": "ab" * 32}), "its count of tests is not one"),
        (json.dumps({"tests": 10**30, "sha256": "ab" * 32}), "its count of tests is not one"),
        (json.dumps({"tests": 3, "sha256": "AB" * 32}), "its SHA-256 is not 64 hex digits"),
        (json.dumps({"tests": 3, "sha256": ["x"]}), "its SHA-256 is not 64 hex digits"),
        (json.dumps({"tests": 3, "sha256": "ab" * 32, "pad": "x" * 2000}), "it is more than"),
    ],
)
async def test_a_shard_that_says_nothing_fit_to_compare_is_kept_as_not_said(
    tmp_path: Path, collected: str | None, why: str
) -> None:
    """The tests may write anything to /ci-output/collected.json, or empty it: the shard
    then did not say (its group warns), and the job's own status is its exit code's."""
    executor = FakeExecutor(FakeRun(report=REPORT, collected=collected))
    async with variants(tmp_path, executor) as h:
        job = await run(h, shard_index=2, shard_count=2)
        assert job.status is JobStatus.SUCCEEDED
        assert job.summary is not None
        assert job.summary.collected_sha256 == COLLECTION_NOT_SAID
        assert job.summary.collected is None
        events = await h.events_until_end(job.id)
        logged = [e.data["text"] for e in events if e.data.get("stream") == "system"]
        unknown = "Shard 2 of 2: what it collected is unknown (/ci-output/collected.json: "
        assert any(line.startswith(unknown + why) for line in logged), logged
