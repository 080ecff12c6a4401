"""The job pipeline: what a claimed job becomes, from its upload to its final status, with a
fake executor (in the one-process wiring: tests/unit/one_process.py)."""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from ci_server.jobs import JobView
from ci_server.models import EventType, JobEvent, JobStatus
from ci_server.runner.executor import ExecutorError
from ci_server.runner.output import LOG_EVENT_CHARS
from ci_server.users import ANONYMOUS_ADMIN
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun, wait_until
from tests.unit.one_process import IMAGE, harness

END_KEYS = ("status", "exit_code", "success", "reason", "duration_seconds")
NO_BUILD_OUTPUT = FakeRun(output=())


def log_texts(events: list[JobEvent], stream: str = "stdout") -> list[str]:
    return [
        e.data["text"] for e in events if e.type is EventType.LOG and e.data["stream"] == stream
    ]


def log_lines(events: list[JobEvent], stream: str = "stdout") -> list[str]:
    """The lines of the log events' texts (one event may carry several)."""
    return [line for text in log_texts(events, stream) for line in text.split("\n")]


def statuses(events: list[JobEvent]) -> list[str]:
    return [e.data["status"] for e in events if e.type is EventType.STATUS]


# -- outcomes --------------------------------------------------------------------------------


async def test_exit_code_zero_succeeds_and_output_becomes_log_lines(tmp_path: Path) -> None:
    run = FakeRun(output=[b"collected 2 items\ntest_a.py::", b"test_one PASSED\n", b"2 passed"])
    async with harness(tmp_path, FakeExecutor(run)) as h:
        job = await h.submit(pytest_args=["-k", "one or two"], timeout_seconds=60)
        events = await h.events_until_end(job.id)
        done = await h.store.get_job(job.id)

        assert done.status is JobStatus.SUCCEEDED
        assert done.success is True
        assert done.exit_code == 0
        assert done.reason is None
        assert done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        assert done.pytest_args == ("-k", "one or two")
        assert done.timeout_seconds == 60

        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert statuses(events) == ["queued", "running"]
        # The install's output, then the tests' output, cut into lines.
        assert log_lines(events) == [
            "Successfully installed pytest",
            "collected 2 items",
            "test_a.py::test_one PASSED",
            "2 passed",
        ]
        end = events[-1].data
        assert {key: end[key] for key in END_KEYS} == {
            "status": "succeeded",
            "exit_code": 0,
            "success": True,
            "reason": None,
            "duration_seconds": done.duration_seconds,
        }

        # The dependencies were installed into an environment built from the runner image,
        # and the tests ran in it with the user's pytest args.
        [build] = h.executor.builds
        [spec] = h.executor.specs
        assert build.spec.image == IMAGE
        assert "requirements.txt" in build.spec.script
        assert spec.image == build.tag
        assert spec.job_id == job.id
        assert "-k 'one or two'" in spec.script
        assert spec.user is not None and not spec.user.startswith("0")  # never root
        assert f"Running in {spec.image}" in log_lines(events, "system")
        files = h.executor.files_seen[job.id]
        assert {k: v.decode() for k, v in files.items()} == dict(PASSING_PROJECT)
        # Nothing is left behind once the job is over (removed after its end).
        await wait_until(lambda: not spec.workspace.exists(), what="the workspace removed")
        await h.uploads_removed()


async def test_nonzero_exit_code_fails(tmp_path: Path) -> None:
    run = FakeRun(output=[b"FAILED test_a.py::test_one\n"], exit_code=1)
    async with harness(tmp_path, FakeExecutor(run)) as h:
        job = await h.finished((await h.submit()).id)
        assert job.status is JobStatus.FAILED
        assert job.success is False
        assert job.exit_code == 1
        assert job.reason is None


async def test_failed_dependency_install_fails_with_a_reason(tmp_path: Path) -> None:
    build = FakeRun(output=[b"ERROR: No matching distribution found for nope\n"], exit_code=1)
    executor = FakeExecutor(build_plan=build)
    async with harness(tmp_path, executor) as h:
        submitted = await h.submit()
        events = await h.events_until_end(submitted.id)
        job = await h.store.get_job(submitted.id)
        assert job.status is JobStatus.FAILED
        assert job.reason is not None and "installing dependencies failed" in job.reason
        assert "ERROR: No matching distribution found for nope" in log_lines(events)
        assert job.reason in log_lines(events, "system")  # the user sees why in the log
        assert events[-1].data["reason"] == job.reason
        assert executor.specs == []  # no test run
        assert executor.images == {}  # no half-built environment kept


async def test_without_the_cache_the_environment_is_built_for_the_job_and_removed(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor, env_cache=False) as h:
        submitted = await h.submit()
        events = await h.events_until_end(submitted.id)
        assert (await h.store.get_job(submitted.id)).status is JobStatus.SUCCEEDED
        [build] = executor.builds
        [spec] = executor.specs
        assert "requirements.txt" in build.spec.script
        assert spec.image == build.tag
        assert "requirements.txt" not in spec.script  # the tests install nothing
        assert executor.images == {}  # not kept
        assert any("for this job only" in line for line in log_lines(events, "system"))


async def test_without_the_cache_a_failed_install_blames_the_dependencies(tmp_path: Path) -> None:
    build = FakeRun(output=[b"ERROR: No matching distribution found for nope\n"], exit_code=1)
    executor = FakeExecutor(build_plan=build)
    async with harness(tmp_path, executor, env_cache=False) as h:
        job = await h.finished((await h.submit()).id)
        assert job.status is JobStatus.FAILED
        assert job.reason == "installing dependencies failed"
        assert executor.specs == []


async def test_exit_100_from_the_project_install_blames_the_project(tmp_path: Path) -> None:
    pyproject = '[build-system]\nrequires = ["setuptools"]\n[project]\nname = "sample"\n'
    packaged = {**PASSING_PROJECT, "pyproject.toml": pyproject}
    executor = FakeExecutor(FakeRun(exit_code=100))
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit(packaged)).id)
        assert job.status is JobStatus.FAILED
        assert job.reason == "installing the project failed"
        assert len(executor.builds) == 1  # the dependencies did install


async def test_exit_100_with_nothing_to_install_is_the_tests_own_status(tmp_path: Path) -> None:
    """Dependencies from the environment, no project to install: 100 is the tests' doing."""
    executor = FakeExecutor(FakeRun(exit_code=100))
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit()).id)
        assert job.status is JobStatus.FAILED
        assert job.exit_code == 100
        assert job.reason is None


async def test_project_without_requirements_fails_without_running(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        submitted = await h.submit({"test_a.py": "def test_a():\n    pass\n"})
        events = await h.events_until_end(submitted.id)
        job = await h.store.get_job(submitted.id)
        assert job.status is JobStatus.FAILED
        assert job.reason is not None and "no requirements.txt" in job.reason
        assert job.exit_code is None
        assert events[-1].data["reason"] == job.reason
        assert h.executor.specs == []
        assert h.executor.builds == []


async def test_corrupted_upload_fails_with_a_reason(tmp_path: Path) -> None:
    """A zip whose directory is fine but whose data is damaged passes the upload check."""
    async with harness(tmp_path) as h:
        upload = tmp_path / "corrupt.zip"
        with zipfile.ZipFile(upload, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("requirements.txt", "pytest\n")
            zf.writestr("test_a.py", "def test_a():\n    pass\n" * 20)
        data = bytearray(upload.read_bytes())
        data[data.index(b"def test_a")] ^= 0xFF
        upload.write_bytes(bytes(data))

        with upload.open("rb") as archive:
            view = await h.service.submit(ANONYMOUS_ADMIN, archive)
        assert isinstance(view, JobView)
        submitted = view.job
        job = await h.finished(submitted.id)
        assert job.status is JobStatus.FAILED
        assert job.reason is not None and "test_a.py" in job.reason
        assert h.executor.specs == []


async def test_executor_error_ends_the_job_in_error(tmp_path: Path) -> None:
    error = ExecutorError("Docker engine unreachable: connection refused")
    async with harness(tmp_path, FakeExecutor(FakeRun(error=error))) as h:
        submitted = await h.submit()
        events = await h.events_until_end(submitted.id)
        job = await h.store.get_job(submitted.id)
        assert job.status is JobStatus.ERROR
        assert job.reason == "Docker engine unreachable: connection refused"
        assert events[-1].data["reason"] == job.reason
        assert events[-1].data["success"] is False


async def test_unexpected_executor_exception_still_ends_the_job(tmp_path: Path) -> None:
    """Not an ExecutorError (say a docker SDK error the executor let through): no job may
    stay `running` forever."""
    executor = FakeExecutor(FakeRun(error=ConnectionResetError("engine went away")))
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit()).id)
        assert job.status is JobStatus.ERROR
        assert job.reason is not None and "engine went away" in job.reason
        # The worker is still alive for the next job.
        executor.plan = FakeRun()
        assert (await h.finished((await h.submit()).id)).status is JobStatus.SUCCEEDED


async def test_upload_lost_before_the_job_runs_ends_it_in_error(tmp_path: Path) -> None:
    gate = asyncio.Event()
    executor = FakeExecutor(FakeRun(gate=gate))
    async with harness(tmp_path, executor) as h:
        first, second = await h.one_running_one_queued()
        await h.blobs.delete(second.id)
        gate.set()
        job = await h.finished(second.id)
        assert job.status is JobStatus.ERROR
        assert job.reason == "the job's upload is missing from the blob store"
        assert [spec.job_id for spec in executor.specs] == [first.id]


# -- the log ---------------------------------------------------------------------------------


async def test_log_cap_truncates_and_says_so(tmp_path: Path) -> None:
    lines = [f"line {n:03}" for n in range(100)]
    run = FakeRun(output=[f"{line}\n".encode() for line in lines])
    executor = FakeExecutor(run, build_plan=NO_BUILD_OUTPUT)
    async with harness(tmp_path, executor, max_log_bytes=200) as h:
        submitted = await h.submit()
        events = await h.events_until_end(submitted.id)
        assert (await h.store.get_job(submitted.id)).status is JobStatus.SUCCEEDED

        kept = log_lines(events)
        assert 0 < len(kept) < 100
        assert kept == lines[: len(kept)]  # a prefix: no holes
        assert sum(len(line) + 1 for line in kept) <= 200
        notes = log_lines(events, "system")
        truncated = [n for n in notes if n.startswith("log truncated")]
        assert len(truncated) == 1
        assert "200 bytes" in truncated[0]
        assert f"{100 - len(kept)} more output line(s) not kept" in notes
        # The truncation notice comes right after the last kept line.
        texts = [e.data.get("text") for e in events]
        assert texts.index(truncated[0]) == texts.index(kept[-1]) + 1


async def test_lines_that_arrive_together_share_one_log_event(tmp_path: Path) -> None:
    flood = "".join(f"line {n:05}\n" for n in range(5000)).encode()
    run = FakeRun(output=[b"alone\n", flood, b"last, without a newline"])
    executor = FakeExecutor(run, build_plan=NO_BUILD_OUTPUT)
    async with harness(tmp_path, executor) as h:
        events = await h.events_until_end((await h.submit()).id)

        lines = [f"line {n:05}" for n in range(5000)]
        assert log_lines(events) == ["alone", *lines, "last, without a newline"]
        texts = log_texts(events)
        assert texts[0] == "alone"  # a line that comes alone is not held back
        assert 2 <= len(texts) - 2 <= 5  # 5000 lines of 10 characters: about 4 events
        assert all(len(text) <= LOG_EVENT_CHARS for text in texts)


async def test_a_chunk_that_passes_the_log_cap_keeps_its_lines_that_fit(tmp_path: Path) -> None:
    lines = [f"line {n:03}" for n in range(100)]
    run = FakeRun(output=["".join(f"{line}\n" for line in lines).encode()])
    executor = FakeExecutor(run, build_plan=NO_BUILD_OUTPUT)
    async with harness(tmp_path, executor, max_log_bytes=200) as h:
        events = await h.events_until_end((await h.submit()).id)

        assert log_lines(events) == lines[:22]  # 22 lines of 9 bytes fit in 200
        stdout = [n for n, e in enumerate(events) if e.data.get("stream") == "stdout"]
        notice = events[stdout[-1] + 1].data["text"]
        assert notice.startswith("log truncated") and "200 bytes" in notice
        assert "78 more output line(s) not kept" in log_lines(events, "system")


# -- dependency environments -----------------------------------------------------------------


async def test_same_dependencies_reuse_the_environment(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        first = await h.finished((await h.submit()).id)
        other_tests = {**PASSING_PROJECT, "test_more.py": "def test_more():\n    pass\n"}
        second = await h.submit(other_tests)
        events = await h.events_until_end(second.id)

        assert first.status is JobStatus.SUCCEEDED
        assert (await h.store.get_job(second.id)).status is JobStatus.SUCCEEDED
        assert len(executor.builds) == 1
        assert executor.specs[0].image == executor.specs[1].image == executor.builds[0].tag
        assert any("reused" in line for line in log_lines(events, "system"))
        assert "Successfully installed pytest" not in log_lines(events)


async def test_a_job_keeps_the_hash_of_the_content_it_tested(tmp_path: Path) -> None:
    """The same files in the same environment: the same hash; changed files: another."""
    async with harness(tmp_path, FakeExecutor()) as h:
        first = await h.finished((await h.submit()).id)
        again = await h.finished((await h.submit()).id)
        edited = {**PASSING_PROJECT, "test_more.py": "def test_more():\n    pass\n"}
        changed = await h.finished((await h.submit(edited)).id)
        assert first.content_hash is not None
        assert again.content_hash == first.content_hash
        assert changed.content_hash not in (None, first.content_hash)


async def test_changed_dependencies_build_a_new_environment(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit()).id)
        changed = {**PASSING_PROJECT, "requirements.txt": "pytest\nrequests\n"}
        await h.finished((await h.submit(changed)).id)
        assert len(executor.builds) == 2
        assert executor.builds[0].tag != executor.builds[1].tag
        assert executor.specs[1].image == executor.builds[1].tag


async def test_no_cache_rebuilds_the_environment(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit()).id)
        job = await h.finished((await h.submit(no_cache=True)).id)
        assert job.status is JobStatus.SUCCEEDED
        assert len(executor.builds) == 2
        assert executor.builds[0].tag == executor.builds[1].tag


async def test_failed_build_is_not_kept_and_is_tried_again(tmp_path: Path) -> None:
    executor = FakeExecutor(build_plan=FakeRun(exit_code=1))
    async with harness(tmp_path, executor) as h:
        assert (await h.finished((await h.submit()).id)).status is JobStatus.FAILED
        executor.build_plan = FakeRun()
        assert (await h.finished((await h.submit()).id)).status is JobStatus.SUCCEEDED
        assert len(executor.builds) == 2
        assert list(executor.images) == [executor.builds[1].tag]


# -- the tests' network, whatever path the job takes -----------------------------------------

APPLICATION = {  # a pyproject.toml with [project] and nothing to install
    "pyproject.toml": '[project]\nname = "app"\nversion = "1"\n',
    "test_app.py": "def test_app():\n    pass\n",
}


async def test_a_project_with_nothing_to_install_runs_in_the_runner_image_without_a_build(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit(APPLICATION)).id)
        assert job.status is JobStatus.SUCCEEDED
        assert executor.builds == []
        [spec] = executor.specs
        assert spec.image == IMAGE
        assert spec.network is False


async def test_an_image_without_pytest_runs_such_projects_in_an_environment_from_then_on(
    tmp_path: Path,
) -> None:
    missing = FakeRun(output=[b"==> pytest is not installed in this image\n"], exit_code=102)
    executor = FakeExecutor(image_plans={IMAGE: missing})
    async with harness(tmp_path, executor) as h:
        first = await h.submit(APPLICATION)
        events = await h.events_until_end(first.id)
        assert (await h.store.get_job(first.id)).status is JobStatus.SUCCEEDED
        [build] = executor.builds
        assert [spec.image for spec in executor.specs] == [IMAGE, build.tag]
        assert "==> pytest is not installed in this image" in log_lines(events)

        second = await h.finished((await h.submit(APPLICATION)).id)
        assert second.status is JobStatus.SUCCEEDED
        assert [spec.image for spec in executor.specs[2:]] == [build.tag]  # straight there
        assert all(spec.network is False for spec in executor.specs)


@pytest.mark.parametrize(
    ("files", "settings"),
    [
        (APPLICATION, {}),
        (PASSING_PROJECT, {}),
        (PASSING_PROJECT, {"env_cache": False}),
        ({**PASSING_PROJECT, "setup.py": "from setuptools import setup\nsetup()\n"}, {}),
    ],
    ids=["nothing-to-install", "requirements", "no-cache", "packaged"],
)
async def test_the_tests_never_get_the_network_only_the_builds(
    tmp_path: Path, files: Mapping[str, str], settings: dict[str, Any]
) -> None:
    for test_network in (False, True):
        executor = FakeExecutor()
        workdir = tmp_path / str(test_network)
        async with harness(workdir, executor, test_network=test_network, **settings) as h:
            assert (await h.finished((await h.submit(files)).id)).status is JobStatus.SUCCEEDED
        assert [spec.network for spec in executor.specs] == [test_network]
        assert all(build.spec.network for build in executor.builds)


async def test_an_environment_gone_from_the_engine_is_built_again(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit()).id)
        [tag] = executor.images
        del executor.images[tag]  # removed behind the server's back
        submitted = await h.submit()
        events = await h.events_until_end(submitted.id)
        assert (await h.store.get_job(submitted.id)).status is JobStatus.SUCCEEDED
        assert [build.tag for build in executor.builds] == [tag, tag]
        assert list(executor.images) == [tag]
        assert any("gone from the engine" in line for line in log_lines(events, "system"))


async def test_environment_images_carry_their_owner_in_the_tag(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit()).id)
        [build] = executor.builds
        assert build.tag.endswith("-" + h.worker.settings.instance_id[:8])


# -- what a job may write --------------------------------------------------------------------


async def test_a_full_tmp_fails_the_job_saying_so(tmp_path: Path) -> None:
    executor = FakeExecutor(FakeRun(output=[b"==> /tmp is full\n"], exit_code=101))
    async with harness(tmp_path, executor, container_tmp_mb=64) as h:
        job = await h.finished((await h.submit()).id)
        assert (job.status, job.exit_code) == (JobStatus.FAILED, 101)
        assert job.reason == "wrote more than 64 MiB to /tmp"


async def test_a_report_at_the_file_limit_fails_the_job_saying_so(tmp_path: Path) -> None:
    executor = FakeExecutor(FakeRun(report="x" * 1024**2))
    async with harness(tmp_path, executor, container_file_mb=1) as h:
        job = await h.finished((await h.submit()).id)
        assert job.status is JobStatus.FAILED
        assert job.reason == "wrote more than 1 MiB to /ci-output"
