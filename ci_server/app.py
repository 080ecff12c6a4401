"""create_app(settings): the FastAPI app with its store, event hub, executor and workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ci_server.api import health, jobs
from ci_server.api.auth import AuthenticateUploads
from ci_server.api.errors import install_error_handlers
from ci_server.api.frames import SseFrames
from ci_server.api.limits import BodySizeLimit
from ci_server.events import EventHub
from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import Executor
from ci_server.scheduler import Scheduler
from ci_server.settings import Settings
from ci_server.store.factory import open_store
from ci_server.store.repository import JobStore


def create_app(
    settings: Settings | None = None,
    *,
    store: JobStore | None = None,
    executor: Executor | None = None,
) -> FastAPI:
    """Build the app; `store` defaults to the settings' (PostgreSQL at CI_DATABASE_URL, else
    SQLite), `executor` to Docker (tests may swap them)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        docker_executor = None
        job_executor = executor
        if job_executor is None:
            docker_executor = DockerExecutor(
                settings.instance_id,
                base_url=settings.docker_host,
                warm_dir=settings.resolved_data_dir / "warm",
                warm_containers=settings.warm_containers,
            )
            job_executor = docker_executor
        async with (
            store or open_store(settings) as job_store,
            EventHub(job_store) as hub,
        ):
            scheduler = Scheduler(job_store, hub, job_executor, settings)
            app.state.settings = settings
            app.state.store = job_store
            app.state.hub = hub
            app.state.frames = SseFrames()
            app.state.scheduler = scheduler
            await scheduler.start()
            try:
                yield
            finally:
                await scheduler.stop()
                if docker_executor is not None:
                    await docker_executor.aclose()

    app = FastAPI(
        title="Self-hosted CI",
        description="Runs a Python project's pytest suite in a Docker container.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(AuthenticateUploads)  # outermost: no stranger's body is ever read
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    return app


app = create_app()
