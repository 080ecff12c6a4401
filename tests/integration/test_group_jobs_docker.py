"""The jobs of a group on the real Docker engine: shards split a suite so that each test runs
once, by file first and by recorded durations next; a Python version runs in its image and
says so. The Worker, the DockerExecutor and an SQLite store are real; the jobs go into the
store as a group's submission puts them (one upload under the group's id)."""

from __future__ import annotations

import contextlib
import io
import zipfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import pytest

from ci_server.app import docker_executor
from ci_server.events import EventHub
from ci_server.groups import new_group_id
from ci_server.metrics import Metrics
from ci_server.models import EventType, Job, JobStatus, new_job_id, utcnow
from ci_server.models import TestOutcome as Outcome
from ci_server.settings import RUNNER_RELEASES, Settings
from ci_server.store.blobs import BlobStore
from ci_server.store.factory import open_blob_store, open_store
from ci_server.store.repository import Store
from ci_server.worker.loop import Worker
from tests.fakes import wait_until

pytestmark = pytest.mark.docker

SUITE = {
    "requirements.txt": "pytest\n",
    "pytest.ini": "[pytest]\ntestpaths = tests\n",
    **{
        f"tests/test_{name}.py": "".join(f"def test_{n}():\n    pass\n\n" for n in range(count))
        for name, count in (("a", 4), ("b", 3), ("c", 2), ("d", 1))
    },
    "tests/test_version.py": (
        "import sys\n\n\ndef test_not_on_3_13():\n    assert sys.version_info[:2] != (3, 13)\n"
    ),
}
ALL = sorted(
    [
        f"tests/test_{f}.py::test_{n}"
        for f, c in (("a", 4), ("b", 3), ("c", 2), ("d", 1))
        for n in range(c)
    ]
    + ["tests/test_version.py::test_not_on_3_13"]
)
TESTS = len(ALL)


@dataclass
class Parts:
    store: Store
    blobs: BlobStore
    settings: Settings

    async def submit(self, files: Mapping[str, str], *jobs: Job) -> list[Job]:
        """Queue `jobs` (of one group, or one lone job) on an upload of `files`."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, text in files.items():
                archive.writestr(name, text)
        buffer.seek(0)
        await self.blobs.put(jobs[0].upload_key, buffer)
        await self.store.add_jobs(jobs)
        return list(jobs)

    async def finished(self, jobs: list[Job]) -> list[Job]:
        async def all_ended() -> bool:
            return all([(await self.store.get_job(j.id)).status.is_terminal for j in jobs])

        await wait_until(all_ended, what="the jobs ended", within=180)
        return [await self.store.get_job(job.id) for job in jobs]

    async def log(self, job_id: str) -> str:
        events = await self.store.events_after(job_id)
        return "\n".join(e.data["text"] for e in events if e.type is EventType.LOG)

    async def ran(self, job_id: str) -> list[str]:
        return [result.node_id for result in await self.store.test_results(job_id)]


@pytest.fixture
async def parts(tmp_path: Path, runner_image: str) -> AsyncIterator[Parts]:
    settings = Settings(
        db_path=tmp_path / "ci.db",
        runner_image=runner_image,
        max_concurrent_jobs=4,
        worker_name="test-group-jobs",
        worker_grace=0,
    )
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        hub = await stack.enter_async_context(EventHub(store, flush_interval=0.02))
        executor = await stack.enter_async_context(docker_executor(settings, Metrics()))
        blobs = await stack.enter_async_context(open_blob_store(settings))
        await stack.enter_async_context(Worker(store, hub, executor, blobs, settings))
        yield Parts(store, blobs, settings)
        for image in await executor.environment_images():
            await executor.remove_image(image.tag)


def group(count: int, **fields: object) -> list[Job]:
    """The jobs of a group of `count` shards, as a submission makes them."""
    group_id, created = new_group_id(), utcnow()
    return [
        Job(
            id=new_job_id(),
            created_at=created,
            owner_id="u1",
            project="app",
            group_id=group_id,
            shard_index=index,
            shard_count=count,
            **fields,  # type: ignore[arg-type]
        )
        for index in range(1, count + 1)
    ]


async def test_shards_run_each_test_once_by_file_then_by_recorded_durations(
    parts: Parts,
) -> None:
    first = await parts.finished(await parts.submit(SUITE, *group(3)))
    assert [job.status for job in first] == [JobStatus.SUCCEEDED] * 3
    ran = [await parts.ran(job.id) for job in first]
    assert sorted(node_id for shard in ran for node_id in shard) == ALL
    # By file, with no durations yet: a file's tests in one shard.
    for shard in ran:
        assert len({node_id.split("::")[0] for node_id in shard}) <= 3
    logs = [await parts.log(job.id) for job in first]
    assert "Shard 1 of 3: the tests are split by file: no durations recorded" in logs[0]
    assert f"Shard 2 of 3: {len(ran[1])} of {TESTS} tests, split by file" in logs[1]

    second = await parts.finished(await parts.submit(SUITE, *group(3)))
    ran = [await parts.ran(job.id) for job in second]
    assert sorted(node_id for shard in ran for node_id in shard) == ALL
    log = await parts.log(second[2].id)
    assert f"Shard 3 of 3: the tests are split by the recorded durations of {TESTS} tests" in log
    assert f"Shard 3 of 3: {len(ran[2])} of {TESTS} tests, about" in log
    assert f"by recorded durations ({TESTS} of {TESTS} known)" in log


async def test_a_python_version_runs_in_its_image_and_a_failure_there_fails_only_it(
    parts: Parts, docker_client: docker.DockerClient
) -> None:
    newer = f"{parts.settings.runner_image.rpartition(':')[0]}:trixie"
    try:
        docker_client.images.get(newer)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{newer} not found: build it with scripts/build-runner-image.sh")
    assert parts.settings.python_images["3.13"] == newer
    jobs = group(1)
    base = jobs[0].replace(shard_index=None, shard_count=None)
    old, new = (
        base.replace(python=RUNNER_RELEASES["bookworm"]),
        base.replace(id=new_job_id(), python="3.13"),
    )
    old, new = await parts.finished(await parts.submit(SUITE, old, new))
    assert old.status is JobStatus.SUCCEEDED
    assert new.status is JobStatus.FAILED
    assert "==> Python 3.11." in await parts.log(old.id)
    assert "==> Python 3.13." in await parts.log(new.id)
    failed = [
        r.node_id for r in await parts.store.test_results(new.id) if r.outcome is Outcome.FAILED
    ]
    assert failed == ["tests/test_version.py::test_not_on_3_13"]
