"""create_app(settings): the FastAPI app, with the parts of the process wired in its lifespan.

Every API process has the store, the blob store (uploads), an EventHub, the JobService, a
Sweeper (lost workers) and a ContentSweeper (uploaded contents no kept job needs).
By default it also runs a Worker of its own (one process: `ci-server`); `worker=False`
serves the API only (`ci-server --no-worker`), and `ci-worker` processes run the jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ci_common.version import package_version
from ci_server.api import artifacts, groups, health, jobs, metrics, tests, uploads
from ci_server.api.auth import AuthenticateUploads
from ci_server.api.errors import install_error_handlers
from ci_server.api.frames import SseFrames
from ci_server.api.limits import BodySizeLimit
from ci_server.api.metrics import CountRequests
from ci_server.api.request_logs import JobIdInAccessLog
from ci_server.api.version import VersionHeaders
from ci_server.contents_gc import ContentSweeper
from ci_server.events import EventHub
from ci_server.jobs import JobService
from ci_server.metrics import Metrics
from ci_server.retention import Pruner
from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import Executor
from ci_server.settings import Settings
from ci_server.store.factory import open_blob_store, open_store
from ci_server.store.repository import Store
from ci_server.web.install import install_dashboard
from ci_server.worker.loop import Worker
from ci_server.worker.recovery import Sweeper


def docker_executor(settings: Settings, metrics: Metrics) -> DockerExecutor:
    """The worker's executor: the Docker engine at CI_DOCKER_HOST, its containers labelled
    with the database and the worker, its warm containers' folders its own; it counts its
    warm containers' jobs in `metrics`."""
    folder = hashlib.sha256(settings.worker_name.encode()).hexdigest()[:12]
    return DockerExecutor(
        settings.instance_id,
        worker=settings.worker_name,
        base_url=settings.docker_host,
        warm_dir=settings.resolved_data_dir / "warm" / folder,
        warm_containers=settings.warm_containers,
        project_overlay=settings.project_overlay,
        metrics=metrics,
    )


def create_app(
    settings: Settings | None = None,
    *,
    store: Store | None = None,
    executor: Executor | None = None,
    worker: bool = True,
) -> FastAPI:
    """Build the app; `store` defaults to the settings' (PostgreSQL at CI_DATABASE_URL, else
    SQLite), `executor` to Docker (tests may swap them); `worker=False`: no jobs run here."""
    settings = settings or Settings()
    process_metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            job_store = await stack.enter_async_context(store or open_store(settings))
            hub = await stack.enter_async_context(
                EventHub(
                    job_store,
                    flush_interval=settings.event_flush_seconds,
                    metrics=process_metrics,
                )
            )
            blobs = await stack.enter_async_context(open_blob_store(settings))
            service = JobService(job_store, hub, blobs, settings)
            await stack.enter_async_context(service)
            job_executor = None
            if worker:
                job_executor = executor or docker_executor(settings, process_metrics)
                await stack.enter_async_context(job_executor)
                await stack.enter_async_context(
                    Worker(job_store, hub, job_executor, blobs, settings)
                )
            await stack.enter_async_context(Pruner(job_store, blobs, settings, job_executor))
            local_worker = settings.worker_name if worker else None
            await stack.enter_async_context(Sweeper(job_store, hub, blobs, settings, local_worker))
            await stack.enter_async_context(ContentSweeper(job_store, blobs, settings))
            app.state.settings = settings
            app.state.store = job_store  # for authentication (api/auth.py)
            app.state.service = service
            app.state.frames = SseFrames()
            app.state.metrics = process_metrics
            app.state.role = "api+worker" if worker else "api"
            yield

    app = FastAPI(
        title="Self-hosted CI",
        description="Runs a Python project's pytest suite in a Docker container.",
        version=package_version(),
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AuthenticateUploads)  # no stranger's body is ever read
    app.add_middleware(JobIdInAccessLog)
    app.add_middleware(CountRequests, metrics=process_metrics)
    app.add_middleware(VersionHeaders)  # outermost: on every answer, a 401 or 413 too
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(groups.router)
    app.include_router(tests.router)
    app.include_router(uploads.router)
    app.include_router(metrics.router)
    app.include_router(artifacts.router)
    install_dashboard(app)
    return app
