"""What the HTTP API sends: the JSON shapes, documented in the README and the OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ci_server.groups import JobGroup
from ci_server.models import EventType, Job, JobStatus, TestOutcome


class SummaryOut(BaseModel):
    passed: int
    failed: int
    errors: int
    skipped: int
    xfailed: int
    xpassed: int
    rerun: int = Field(description="runs a plugin repeated; not tests, not in `total`")
    flaky: int = Field(description="tests that failed, then passed on a rerun (the job passes)")
    total: int
    results_kept: int | None = Field(
        description="per-test results kept, when fewer than the tests (the server's limit)"
    )
    warning: str | None = Field(
        description="set when the counts contradict the exit code (the report is the tests' "
        "own); a group's, also when its shards did not collect the same tests"
    )
    collected: int | None = Field(
        default=None, description="a shard's: how many tests it collected, before its split"
    )
    collected_sha256: str | None = Field(
        default=None,
        description="a shard's: the SHA-256 of the node ids it collected, the same in every "
        "shard of its group (else the group fails); `not said` when it left none",
    )

    # Read straight from the domain's TestSummary (its `total` property included).
    model_config = ConfigDict(from_attributes=True)


class TestResultOut(BaseModel):
    position: int = Field(description="its place in the run, from 0; pass a page's last as `after`")
    node_id: str = Field(description="pytest's node id; a module's path for a collection error")
    outcome: TestOutcome
    duration_seconds: float
    message: str | None
    details: str | None

    model_config = ConfigDict(from_attributes=True)  # read from the domain's TestResult


class ArtifactOut(BaseModel):
    path: str = Field(description="relative, `/`-separated; GET /jobs/{id}/artifacts/{path}")
    size: int = Field(description="in bytes")
    sha256: str = Field(description="of its bytes, in hex")

    model_config = ConfigDict(from_attributes=True)  # read from the domain's Artifact


class TestRunOut(BaseModel):
    job_id: str
    outcome: TestOutcome
    duration_seconds: float
    content_hash: str | None = Field(
        description="what its job tested: a digest of the project's files and environment"
    )

    model_config = ConfigDict(from_attributes=True)  # read from the domain's TestRun


class TestHistoryOut(BaseModel):
    node_id: str
    runs: list[TestRunOut] = Field(description="its latest runs in finished jobs, newest first")
    failure_rate: float = Field(description="the share of those runs that failed or errored")
    median_duration: float = Field(description="the median of their durations, in seconds")
    flaky_runs: int = Field(
        description="how many of those runs failed, then passed on a rerun, or failed on "
        "content (files and environment) it also passed on"
    )
    runs_on_flaky_content: int = Field(
        description="how many of those runs were on content it both passed and failed on"
    )
    failures_on_flaky_content: int = Field(
        description="how many of those runs failed on content it also passed on"
    )
    flake_rate: float = Field(description="the share of those runs that were flaky")

    model_config = ConfigDict(from_attributes=True)  # read from the domain's TestHistory


def json_array(schema: type[BaseModel], items: Iterable[object]) -> bytes:
    """`items` as a JSON array of `schema`, one at a time: a thread encoding a large answer
    in one call would hold the GIL, and so stall the event loop, until it is done."""
    encoded = (schema.model_validate(item).model_dump_json() for item in items)
    return f"[{','.join(encoded)}]".encode()


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
    summary: SummaryOut | None = Field(description="test counts from pytest's report")
    owner_id: str | None = Field(description="the id of the user who submitted the job")
    worker: str | None = Field(description="the worker that ran (runs) it; null until claimed")
    project: str | None = Field(
        description="the project's name (--project, ci.toml, packaging metadata, or the "
        "folder's name); null for jobs from before projects"
    )
    content_hash: str | None = Field(
        description="a digest of the project's files and the environment its tests ran in; "
        "null until they ran, and for jobs from before content hashes"
    )
    group_id: str | None = Field(
        description="the group of jobs it belongs to (`g-...`: GET /groups/{group_id}); "
        "null for a lone job"
    )
    python: str | None = Field(
        description="the Python version it runs under; null: the server's default image"
    )
    shard_index: int | None = Field(description="its shard, 1 to shard_count; null: unsharded")
    shard_count: int | None = Field(description="how many shards its group's suite is split in")
    label: str = Field(
        description='what tells it from its group\'s other jobs: "py3.13 2/4"; "" if nothing'
    )

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
            summary=None if job.summary is None else SummaryOut.model_validate(job.summary),
            owner_id=job.owner_id,
            worker=job.worker,
            project=job.project,
            content_hash=job.content_hash,
            group_id=job.group_id,
            python=job.python,
            shard_index=job.shard_index,
            shard_count=job.shard_count,
            label=job.label,
        )


class GroupOut(BaseModel):
    """One submission run as several jobs (Python versions x shards)."""

    group_id: str = Field(description="`g-` and 12 hex digits")
    status: JobStatus = Field(
        description="queued while every job waits, running until every job has ended, then "
        "the worst of theirs: error > timed_out > failed > cancelled > succeeded; failed at "
        "least when its shards collected different tests (its summary's warning says so)"
    )
    success: bool | None = Field(description="null until every job has ended")
    created_at: datetime
    start_time: datetime | None = Field(description="when its first job started")
    end_time: datetime | None = Field(description="when its last job ended")
    duration_seconds: float | None
    summary: SummaryOut | None = Field(description="the sum of its jobs' test counts")
    owner_id: str | None
    project: str | None
    jobs: list[JobOut] = Field(description="by Python version, then shard")

    @classmethod
    def from_view(cls, group: JobGroup, jobs: Iterable[JobOut]) -> GroupOut:
        summary = group.summary
        return cls(
            group_id=group.id,
            status=group.status,
            success=group.success,
            created_at=group.created_at,
            start_time=group.started_at,
            end_time=group.finished_at,
            duration_seconds=group.duration_seconds,
            summary=None if summary is None else SummaryOut.model_validate(summary),
            owner_id=group.owner_id,
            project=group.project,
            jobs=list(jobs),
        )


class Health(BaseModel):
    status: Literal["ok", "unavailable"] = Field(
        description="ok: this process can serve; unavailable (HTTP 503): its store does not answer"
    )
    role: Literal["api+worker", "api"] = Field(
        description="api+worker: this process runs jobs too (`ci-server`); api: it serves the "
        "API only (`ci-server --no-worker`)"
    )
    store: bool = Field(description="whether the database answered, just now")
    worker: str | None = Field(description="the name of this process's worker, if it has one")
    version: str = Field(description="the server's package version (also in X-CI-Version)")
    api_version: str = Field(
        description="its API version, MAJOR.MINOR (also in X-CI-API-Version): a client works "
        "with any server of its major version"
    )


class ErrorOut(BaseModel):
    """Every refusal but 422 (FastAPI's own validation shape)."""

    detail: str = Field(description="what is wrong, in words for a person")


EVENT_STREAM_SCHEMA: dict[str, Any] = {
    "description": "one Server-Sent Event; the fields of `data` by type: README, Events",
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the event's seq"},
        "event": {"enum": [event_type.value for event_type in EventType]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["seq", "type", "time"],
                "properties": {
                    "seq": {"type": "integer", "minimum": 1},
                    "type": {"enum": [event_type.value for event_type in EventType]},
                    "time": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}
"""The OpenAPI description of one event of GET /jobs/{id}/events (text/event-stream)."""


MAX_MISSING_QUERY = 100_000
"""Hashes one `POST /uploads/missing` may ask about (a manifest's files and folders)."""
HASH_PATTERN = r"^[0-9a-f]{64}$"


class MissingIn(BaseModel):
    hashes: list[str] = Field(
        max_length=MAX_MISSING_QUERY,
        description="SHA-256 content hashes (lower-case hex) of files and trees",
    )


class MissingOut(BaseModel):
    missing: list[str] = Field(description="those of `hashes` you have not uploaded")


class ReceivedOut(BaseModel):
    received: int = Field(description="contents stored")
    bytes: int = Field(description="their size, unpacked")
