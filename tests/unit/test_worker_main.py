"""`ci-worker`: its settings and the process's parts, on an SQLite file shared with an API
process's store (no signal crosses between them: the worker polls)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ci_server.models import JobStatus
from ci_server.store.sqlite import SqliteStore
from ci_server.worker import loop
from ci_server.worker.__main__ import main, run_worker
from tests.fakes import FakeExecutor
from tests.unit.one_process import harness, settings_for


async def test_a_worker_process_runs_what_another_process_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop, "QUEUE_POLL_SECONDS", 0.05)
    settings = settings_for(tmp_path, worker_name="build-1", max_concurrent_jobs=2)
    stop = asyncio.Event()
    executor = FakeExecutor()
    worker = asyncio.create_task(run_worker(settings, executor=executor, stop=stop))
    try:
        async with (
            SqliteStore(settings.db_path) as store,
            harness(tmp_path, store=store, worker=False) as api,
        ):
            ids = [(await api.submit()).id for _ in range(3)]
            finished = [await api.finished(job_id) for job_id in ids]
            assert [(job.status, job.worker) for job in finished] == [
                (JobStatus.SUCCEEDED, "build-1")
            ] * 3
            [registered] = await store.list_workers()
            assert (registered.name, registered.max_jobs) == ("build-1", 2)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 30)
    async with SqliteStore(settings.db_path) as store:
        [stopped] = await store.list_workers()
        assert stopped.stopped_at is not None
    assert sorted(spec.job_id for spec in executor.specs) == sorted(ids)


def test_an_empty_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--name", ""])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "ci-worker: error: CI_WORKER_NAME: String should have at least 1 character" in error
