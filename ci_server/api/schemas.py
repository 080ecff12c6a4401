"""What the HTTP API sends: the JSON shapes, documented in the README and the OpenAPI schema."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ci_server.models import Job, JobStatus


class JobOut(BaseModel):
    job_id: str
    status: JobStatus
    success: bool | None = Field(description="null until the job has finished")
    created_at: datetime
    start_time: datetime | None
    end_time: datetime | None
    duration_seconds: float | None
    exit_code: int | None = Field(description="the exit status of the test command")
    reason: str | None = Field(description="why the job ended as it did, when not plain")
    queue_position: int | None = Field(description="1 = next to run; null unless queued")
    timeout_seconds: float
    pytest_args: list[str]

    @classmethod
    def from_job(cls, job: Job, queue_position: int | None = None) -> JobOut:
        return cls(
            job_id=job.id,
            status=job.status,
            success=job.success,
            created_at=job.created_at,
            start_time=job.started_at,
            end_time=job.finished_at,
            duration_seconds=job.duration_seconds,
            exit_code=job.exit_code,
            reason=job.reason,
            queue_position=queue_position,
            timeout_seconds=job.timeout_seconds,
            pytest_args=list(job.pytest_args),
        )


class Health(BaseModel):
    status: str = "ok"
