"""The one-process mode on a real SQLite file: the worker's claims, its event flusher and
the API's writes share one connection (aiosqlite's thread)."""

from __future__ import annotations

from pathlib import Path

from ci_server.models import JobStatus
from ci_server.store.sqlite import SqliteStore
from tests.fakes import FakeExecutor, FakeRun
from tests.unit.one_process import harness


async def test_a_busy_worker_drains_the_queue_without_a_failed_write(tmp_path: Path) -> None:
    """Four jobs at a time finish (a status write, an event batch) while the next are
    claimed (an UPDATE ... RETURNING): a commit between a claim's steps failed with
    `cannot commit transaction - SQL statements in progress`, and jobs ended `error`."""
    executor = FakeExecutor(FakeRun(output=()), build_plan=FakeRun(output=()))
    async with (
        SqliteStore(tmp_path / "ci.db") as store,
        harness(tmp_path, executor, store=store, max_concurrent_jobs=4) as h,
    ):
        ids = [(await h.submit()).id for _ in range(80)]
        finished = [await h.finished(job_id) for job_id in ids]
    assert {job.status for job in finished} == {JobStatus.SUCCEEDED}
    assert sorted(spec.job_id for spec in executor.specs) == sorted(ids)
