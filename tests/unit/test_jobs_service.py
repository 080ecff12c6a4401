"""JobService: what a user may do with jobs (the routes' only way in), with the in-memory
store; the worker, where a test needs one, runs a FakeExecutor."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from ci_server import jobs
from ci_server.models import (
    EventType,
    InvalidUpload,
    JobAlreadyFinished,
    JobNotFound,
    JobStatus,
)
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.store.memory import MemoryStore
from ci_server.users import ANONYMOUS_ADMIN, User
from tests.fakes import FakeExecutor, FakeRun
from tests.unit.one_process import harness

ADMIN = ANONYMOUS_ADMIN
ANN = User(id="a00000000001", name="Ann", email="ann@example.com")
BOB = User(id="b00000000002", name="Bob", email="bob@example.com")


async def test_another_users_job_is_unknown_to_every_question(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job = await h.submit(user=ANN)
        await h.finished(job.id)
        await h.store.set_test_results(job.id, [Result("t.py::a", Outcome.PASSED, 0.1)])

        asked = {
            "get": lambda user, job_id: h.service.get(user, job_id),
            "test results": lambda user, job_id: h.service.test_results(user, job_id),
            "events": lambda user, job_id: h.service.events(user, job_id),
            "cancel": lambda user, job_id: h.service.cancel(user, job_id),
        }
        for what, ask in asked.items():
            with pytest.raises(JobNotFound) as of_another:
                await ask(BOB, job.id)
            with pytest.raises(JobNotFound) as unknown:
                await ask(BOB, "0123456789ab")
            assert str(of_another.value) == str(unknown.value).replace("0123456789ab", job.id), what
        assert (await h.service.get(ANN, job.id)).job.id == job.id
        assert len(await h.service.test_results(ADMIN, job.id)) == 1


async def test_a_user_lists_their_own_jobs_and_an_admin_every_job(tmp_path: Path) -> None:
    async with harness(tmp_path, worker=False) as h:
        anns = [await h.submit(user=ANN) for _ in range(2)]
        bobs = await h.submit(user=BOB)
        assert [v.job.id for v in await h.service.list(ANN)] == [anns[1].id, anns[0].id]
        assert [v.job.id for v in await h.service.list(ADMIN, limit=2)] == [bobs.id, anns[1].id]
        # No worker here: all three wait, and their places count everyone's jobs.
        assert [v.queue_position for v in await h.service.list(BOB)] == [3]


async def test_a_submitted_job_waits_queued_with_its_first_event(tmp_path: Path) -> None:
    async with harness(tmp_path, worker=False, job_timeout=10, max_job_timeout=30) as h:
        job = await h.submit(pytest_args=["-k", "x"], no_cache=True)
        assert (job.status, job.owner_id, job.worker) == (JobStatus.QUEUED, ADMIN.id, None)
        assert (job.pytest_args, job.no_cache, job.timeout_seconds) == (("-k", "x"), True, 10)
        assert (await h.submit(timeout_seconds=3600)).timeout_seconds == 30  # capped
        [event] = await h.store.events_after(job.id)
        assert (event.seq, event.type, event.data) == (1, EventType.STATUS, {"status": "queued"})
        assert await h.blobs.exists(job.id)


async def test_an_upload_that_is_not_a_zip_is_refused_and_nothing_is_kept(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path, worker=False) as h:
        with pytest.raises(InvalidUpload):
            await h.service.submit(ADMIN, io.BytesIO(b"not a zip"))
        assert await h.service.list(ADMIN) == []
        assert list(h.service.incoming_dir.iterdir()) == []
        assert await h.blobs.list_blobs() == []


async def test_cancelling_a_finished_job_changes_nothing(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        job = await h.finished((await h.submit()).id)
        events = await h.events_until_end(job.id)
        with pytest.raises(JobAlreadyFinished, match="has already finished: succeeded"):
            await h.service.cancel(ADMIN, job.id)
        assert await h.store.get_job(job.id) == job
        assert await h.hub.last_seq(job.id) == len(events)  # no new event either


async def test_a_cancel_no_worker_answers_returns_the_job_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its worker is gone: the request stays in the store (for it, if it comes back), the
    answer comes after CANCEL_WAIT_SECONDS, and the sweep will end the job."""
    monkeypatch.setattr(jobs, "CANCEL_WAIT_SECONDS", 0.2)
    store = MemoryStore()
    async with harness(tmp_path, store=store, worker=False) as h:
        job = await h.submit()
        await store.claim_next_job("gone")
        answer = await h.service.cancel(ADMIN, job.id)
        assert (answer.status, answer.worker) == (JobStatus.RUNNING, "gone")
        assert await store.cancel_requests("gone") == [job.id]


async def test_events_start_where_asked_and_a_finished_job_always_sends_its_end(
    tmp_path: Path,
) -> None:
    run = FakeRun(output=[f"line {n}\n".encode() for n in range(5)])
    async with harness(tmp_path, FakeExecutor(run)) as h:
        job = await h.finished((await h.submit()).id)
        every = await h.events_until_end(job.id)
        last = every[-1].seq

        async def seqs(**start: int) -> list[int]:
            stream = await h.service.events(ADMIN, job.id, **start)
            return [event.seq async for batch in stream for event in batch]

        assert await seqs() == list(range(1, last + 1))
        assert await seqs(after=3) == list(range(4, last + 1))
        assert await seqs(tail=2) == [last - 1, last]
        assert await seqs(after=last) == [last]  # resuming past the end: the END again
        assert await seqs(after=last + 100) == [last]
        assert await seqs(tail=0) == [last]


async def test_the_queued_jobs_of_a_deactivated_owner_are_cancelled(tmp_path: Path) -> None:
    store = MemoryStore()
    for user in (ANN, BOB):
        await store.add_user(user)
    async with harness(tmp_path, store=store, worker=False) as h:
        anns = [await h.submit(user=ANN) for _ in range(2)]
        bobs = await h.submit(user=BOB)
        await store.set_user_active(ANN.id, False)  # as `ci-admin` does, from another process

        cancelled = await h.service.cancel_jobs_of_inactive_owners()

        assert sorted(job.id for job in cancelled) == sorted(job.id for job in anns)
        for job in anns:
            stored = await store.get_job(job.id)
            assert (stored.status, stored.reason) == (
                JobStatus.CANCELLED,
                "cancelled: owner deactivated",
            )
            assert (await h.events_until_end(job.id))[-1].data["status"] == "cancelled"
        assert (await store.get_job(bobs.id)).status is JobStatus.QUEUED


async def test_the_store_answers_or_not(tmp_path: Path) -> None:
    class Down(MemoryStore):
        async def ping(self) -> None:
            await asyncio.sleep(3600)

    async with harness(tmp_path, worker=False) as h:
        assert await h.service.store_answers()
    async with harness(tmp_path, store=Down(), worker=False) as h:
        assert not await h.service.store_answers()
