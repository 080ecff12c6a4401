"""An in-memory JobStore: the twin of the real backends, for unit tests and experiments."""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ci_server.models import Job, JobEvent, JobNotFound, JobStatus, TestResult
from ci_server.store.repository import JobStore


class MemoryJobStore(JobStore):
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._events: dict[str, list[JobEvent]] = {}
        self._results: dict[str, list[TestResult]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def add_job(self, job: Job) -> None:
        if job.id in self._jobs:
            raise ValueError(f"duplicate job id {job.id}")
        self._jobs[job.id] = job
        self._order.append(job.id)

    async def get_job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(job_id) from None

    async def list_jobs(self, *, limit: int = 100, before: str | None = None) -> list[Job]:
        newest_first = list(reversed(self._order))
        if before is not None:
            if before not in self._jobs:
                raise JobNotFound(before)
            newest_first = newest_first[newest_first.index(before) + 1 :]
        return [self._jobs[job_id] for job_id in newest_first[:limit]]

    async def jobs_with_status(self, *statuses: JobStatus) -> list[Job]:
        return [self._jobs[i] for i in self._order if self._jobs[i].status in statuses]

    async def update_job(self, job: Job, *, expected: JobStatus) -> bool:
        stored = self._jobs.get(job.id)
        if stored is None or stored.status is not expected:
            return False
        self._jobs[job.id] = job
        return True

    async def append_events(self, events: Sequence[JobEvent]) -> None:
        for event in events:
            stored = self._events.setdefault(event.job_id, [])
            if stored and stored[-1].seq >= event.seq:
                raise ValueError(f"event seq {event.seq} of job {event.job_id} is not new")
            stored.append(event)

    async def events_after(
        self, job_id: str, after_seq: int = 0, *, limit: int | None = None
    ) -> list[JobEvent]:
        stored = self._events.get(job_id, [])
        start = bisect.bisect_right([e.seq for e in stored], after_seq)
        end = None if limit is None else start + limit
        return stored[start:end]

    async def last_event_seq(self, job_id: str) -> int:
        stored = self._events.get(job_id)
        return stored[-1].seq if stored else 0

    async def set_test_results(self, job_id: str, results: Sequence[TestResult]) -> None:
        self._results[job_id] = list(results)

    async def test_results(self, job_id: str) -> list[TestResult]:
        return list(self._results.get(job_id, []))
