"""Every knob of the server in one place, read from CI_* environment variables."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ci_server.groups import MAX_GROUP_JOBS
from ci_server.runner.artifacts import ArtifactLimits
from ci_server.runner.executor import ContainerLimits
from ci_server.runner.reports import ReportLimits
from ci_server.runner.workspace import ArchiveLimits

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
"""How a database URL starts; anything else names an SQLite file."""
DEFAULT_RUNNER_IMAGE = "python:3.12-slim"
RUNNER_RELEASES = {"bookworm": "3.11", "trixie": "3.13"}
"""The Python of each Debian release scripts/build-runner-image.sh builds (ci-runner:<release>)."""
_PYTHON_VERSION = re.compile(r"\d+\.\d+")
_PYTHON_TAG = re.compile(r"(\d+\.\d+)(\.\d+)?(?![\d.])")


def parse_python_images(text: str) -> dict[str, str]:
    """`3.11=ci-runner:bookworm,3.13=ci-runner:trixie` as {version: image}; ValueError
    says what is wrong."""
    images: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        version, equals, image = (side.strip() for side in item.partition("="))
        if not equals or not _PYTHON_VERSION.fullmatch(version) or not image:
            raise ValueError(f"{item!r} is not VERSION=IMAGE (3.13=ci-runner:trixie)")
        if version in images:
            raise ValueError(f"Python {version} is given twice")
        images[version] = image
    return images


def default_python_images(runner_image: str) -> dict[str, str]:
    """The versions a server runs when CI_PYTHON_IMAGES is unset, from its runner image: a
    ci-runner image of build-runner-image.sh brings its sibling releases (the script
    builds them all: ci-runner:bookworm gives 3.11 and 3.13); an image tagged with a
    version (python:3.12-slim) is that version; any other, none."""
    repository, _, tag = runner_image.rpartition(":")
    if repository and tag in RUNNER_RELEASES:
        return {version: f"{repository}:{release}" for release, version in RUNNER_RELEASES.items()}
    match = _PYTHON_TAG.match(tag) if repository else None
    return {match.group(1): runner_image} if match else {}


def check_postgres_url(url: str) -> str:
    """Return `url` if it can name a PostgreSQL database; ValueError says why not."""
    if not url.startswith(POSTGRES_SCHEMES):
        raise ValueError("a database URL must start with postgresql://")
    urlsplit(url).port  # noqa: B018 - raises ValueError for a port that is not a number
    return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CI_", frozen=True)

    db_path: Path = Field(
        default=Path("ci_jobs.db"), description="SQLite database file, unless database_url is set"
    )
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:password@host:port/database: keep jobs, events, users "
        "and keys in PostgreSQL instead of the SQLite file",
    )
    database_listen: bool = Field(
        default=True,
        description="LISTEN for PostgreSQL's notifications (a job queued, a batch of events, "
        "a cancel); false through a pooler that cannot (PgBouncer in transaction mode): the "
        "processes then poll, every 1 to 2 s",
    )
    auth: bool = Field(
        default=True,
        description="require an API key (`ci-admin key create`) on every request but /health; "
        "CI_AUTH=off serves everyone as an admin, and `ci-server` allows it only on a "
        "loopback address",
    )
    data_dir: Path | None = Field(
        default=None,
        description="uploads and workspaces; default: <db_path>.data/ beside the database",
    )
    blob_store: Literal["fs", "postgres"] | None = Field(
        default=None,
        description="where uploads are kept until their job ends: fs (a directory under "
        "data_dir, for one host) or postgres (the database_url's, for workers on several "
        "hosts); default: postgres with database_url, else fs",
    )
    runner_image: str = Field(default=DEFAULT_RUNNER_IMAGE, description="image the tests run in")
    max_concurrent_jobs: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        description="jobs running at once; the rest wait queued",
    )
    job_timeout: float = Field(default=1800.0, gt=0, description="default per-job timeout, seconds")
    max_job_timeout: float = Field(
        default=1800.0, gt=0, description="largest timeout a client may ask"
    )
    max_upload_bytes: int = Field(
        default=100 * 1024**2, gt=0, description="largest accepted upload"
    )
    max_unpacked_bytes: int = Field(default=1024**3, gt=0, description="largest unpacked project")
    max_files: int = Field(default=20_000, gt=0, description="most files in one upload")
    max_log_bytes: int = Field(default=20 * 1024**2, gt=0, description="log kept per job, then cut")
    max_line_chars: int = Field(default=4096, gt=0, description="longer output lines are split")
    max_report_bytes: int = Field(
        default=50 * 1024**2, gt=0, description="largest test report read; a larger one is refused"
    )
    max_test_results: int = Field(
        default=50_000,
        gt=0,
        description="per-test results kept from one report; the rest are counted, not kept",
    )
    max_artifact_files: int = Field(
        default=1000,
        gt=0,
        description="files kept per job as artifacts (its report, what ci.toml's `artifacts` "
        "match); the log says when more are left out",
    )
    max_artifact_bytes: int = Field(
        default=100 * 1024**2,
        gt=0,
        description="bytes of artifacts kept per job; a file that would pass it is left out, "
        "and the log says so",
    )
    retention_days: float = Field(
        default=30.0,
        ge=0,
        description="finished jobs older than this (by their end) are removed with their "
        "events, test results, artifacts and uploads; 0: kept forever",
    )
    max_jobs_kept: int = Field(
        default=0,
        ge=0,
        description="at most this many finished jobs of each user are kept (their latest); "
        "0: no limit",
    )
    env_max_age_days: float = Field(
        default=30.0,
        ge=0,
        description="environment images (this server's) no job used for this long are "
        "removed; 0: kept (only env_cache_size bounds them)",
    )
    prune_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="how often a process removes what retention no longer keeps",
    )
    container_memory_mb: int = Field(
        default=2048,
        gt=0,
        description="memory limit of a job's processes (no swap); its /tmp comes on top",
    )
    container_tmp_mb: int = Field(
        default=2048,
        gt=0,
        description="size of a job's /tmp (its project copy, HOME, what its tests write; the "
        "rest of its file system is read-only): a tmpfs, so memory, added to the container's "
        "memory limit",
    )
    container_file_mb: int = Field(
        default=1024,
        gt=0,
        description="largest file a job may write, anywhere: bounds its report "
        "(/ci-output/junit.xml), the one file it leaves on the server's disk",
    )
    container_cpus: float = Field(default=1.0, gt=0, description="CPU limit per container")
    container_pids: int = Field(default=512, gt=0, description="process/thread limit per container")
    container_user: str = Field(
        default="1000:1000", description="uid:gid the tests run as (never root)"
    )
    test_network: bool = Field(
        default=False,
        description="let the tests reach the network; by default they have none at all "
        "(installs happen in environment builds, which have it)",
    )
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="below this much free space on the data dir's file system a new upload "
        "is refused (507); running jobs carry on",
    )
    content_keep_hours: float = Field(
        default=24.0,
        gt=0,
        description="how long a project's uploaded contents are kept after its last job "
        "was submitted, for the next submit to reuse (contents_gc.py)",
    )
    content_sweep_seconds: float = Field(
        default=600.0, gt=0, description="how often contents no kept job needs are removed"
    )
    env_cache: bool = Field(
        default=True,
        description="keep dependency environments for the next jobs; off, each job's is "
        "built and removed after it",
    )
    env_cache_size: int = Field(
        default=20, ge=1, description="environment images kept (of this server's own)"
    )
    workspace_cache_size: int = Field(
        default=4,
        ge=0,
        description="projects sent as contents whose last workspace each worker keeps, so "
        "that their next job writes only what changed; 0: none",
    )
    warm_containers: int = Field(
        default=2,
        ge=0,
        description="containers started ahead for the next jobs, one per recently used image "
        "and settings, so a job skips its container's start; 0: none",
    )
    project_overlay: bool = Field(
        default=True,
        description="give each job its project as an overlay of the uploaded files instead "
        "of a copy in its /tmp (the worker mounts it: it must run as root, beside the Docker "
        "engine, or jobs copy, as with false)",
    )
    allowed_images: str = Field(
        default="",
        description="comma-separated images a project's ci.toml may choose, besides runner_image",
    )
    docker_host: str | None = Field(
        default=None, description="Docker engine URL; default DOCKER_HOST"
    )
    event_flush_seconds: float = Field(
        default=0.05,
        gt=0,
        le=5,
        description="a job's events are written to the store at least this often (sooner "
        "when 2,000 wait): how late a client of another process sees a line, at most",
    )
    worker_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=200,
        description="this process's worker, as jobs and `ci-admin workers` name it; unique "
        "among the workers of one database (default: the host name)",
    )
    worker_timeout: float = Field(
        default=30.0,
        gt=0,
        description="a worker silent this long (no heartbeat) is lost: its running jobs end "
        "`error`; workers beat every timeout/6 seconds (at most 5)",
    )
    worker_grace: float = Field(
        default=30.0,
        ge=0,
        description="on SIGTERM, a worker stops taking jobs and lets its running ones finish "
        "this long, then ends the rest `error`",
    )

    python_images: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="the Python versions a submission may ask for (`ci submit test --python "
        "3.11,3.13`) and the runner image of each: 3.11=ci-runner:bookworm,3.13=ci-runner:trixie; "
        "unset: derived from runner_image (default_python_images); empty: none",
    )
    max_group_jobs: int = Field(
        default=MAX_GROUP_JOBS,
        ge=1,
        description="most jobs one submission may make (Python versions x shards)",
    )

    @model_validator(mode="before")
    @classmethod
    def _python_images_by_default(cls, data: Any) -> Any:
        """Unset, python_images follows the runner image (default_python_images)."""
        if isinstance(data, dict) and data.get("python_images") is None:
            runner_image = data.get("runner_image", DEFAULT_RUNNER_IMAGE)
            return {**data, "python_images": default_python_images(str(runner_image))}
        return data

    @field_validator("python_images", mode="before")
    @classmethod
    def _version_images(cls, value: object) -> object:
        """`3.11=image,3.13=image` (the environment's form) as a mapping."""
        return parse_python_images(value) if isinstance(value, str) else value

    metrics_public: bool = Field(
        default=False,
        description="serve GET /metrics without an API key (for a Prometheus that has none); "
        "by default it needs an admin's",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="the server's log lines: text, or json (an object per line, with the "
        "job's id on every line about a job)",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, url: str | None) -> str | None:
        return check_postgres_url(url) if url else None

    @model_validator(mode="after")
    def _blob_store_has_its_database(self) -> Self:
        if self.blob_store == "postgres" and not self.database_url:
            raise ValueError("CI_BLOB_STORE=postgres needs CI_DATABASE_URL")
        return self

    @property
    def resolved_blob_store(self) -> Literal["fs", "postgres"]:
        return self.blob_store or ("postgres" if self.database_url else "fs")

    @property
    def allowed_image_set(self) -> frozenset[str]:
        extra = {image.strip() for image in self.allowed_images.split(",") if image.strip()}
        return frozenset({self.runner_image, *extra, *self.python_images.values()})

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir or self.db_path.with_name(self.db_path.name + ".data")

    @property
    def heartbeat_interval(self) -> float:
        """How often a worker beats, and any process looks for lost workers."""
        return min(5.0, self.worker_timeout / 6)

    @property
    def instance_id(self) -> str:
        """Stable for one database: labels the containers this server owns."""
        if self.database_url:
            # Host, port and database name: a new password is still the same database.
            url = urlsplit(self.database_url)
            database = f"{url.hostname}:{url.port}{url.path}"
        else:
            database = str(self.db_path.resolve())
        return hashlib.sha256(database.encode()).hexdigest()[:16]

    @property
    def container_limits(self) -> ContainerLimits:
        return ContainerLimits(
            memory_bytes=self.container_memory_mb * 1024**2,
            cpus=self.container_cpus,
            pids=self.container_pids,
            tmp_bytes=self.container_tmp_mb * 1024**2,
            file_bytes=self.container_file_mb * 1024**2,
        )

    @property
    def report_limits(self) -> ReportLimits:
        return ReportLimits(max_bytes=self.max_report_bytes, max_results=self.max_test_results)

    @property
    def artifact_limits(self) -> ArtifactLimits:
        return ArtifactLimits(max_files=self.max_artifact_files, max_bytes=self.max_artifact_bytes)

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(max_files=self.max_files, max_unpacked_bytes=self.max_unpacked_bytes)


class InvalidSettings(Exception):
    """A CI_* variable holds what its setting cannot take; the message names each such
    variable and why, never its value (CI_DATABASE_URL's holds a password)."""


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `overrides`, from command-line options), or
    InvalidSettings saying what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise InvalidSettings("; ".join(map(_problem, e.errors(include_input=False)))) from None


def _problem(error: ErrorDetails) -> str:
    why = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:  # a rule across settings: its message names them
        return why
    return f"CI_{'_'.join(str(part) for part in error['loc']).upper()}: {why}"
