"""GET /metrics of real servers after real jobs on real Docker: the counters move.

One process (`ci-server`) counts everything it does; split (`ci-server --no-worker` and
`ci-worker --metrics-port`), the API counts its requests and reads the queue from the store,
and the worker counts the jobs it ran on its own port.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import docker
import pytest
import requests

from ci_server.runner.executor import WORKER_LABEL
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, WorkerProcess, free_port, server_env, wait_for
from tests.e2e.test_lifecycle import ProjectFactory, submit_async
from tests.integration.test_metrics_api import Samples, samples, value

pytestmark = pytest.mark.docker


def scrape(server: ServerProcess) -> Samples:
    response = server.get("/metrics")
    assert response.status_code == 200, response.text
    return samples(response.text)


def warm_container_waits(client: docker.DockerClient, worker: str) -> bool:
    waiting = client.containers.list(filters={"label": f"{WORKER_LABEL}={worker}"})
    return any((container.name or "").startswith("ci-warm-") for container in waiting)


def test_the_counters_move_with_real_jobs(
    make_server: ServerFactory, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    worker = f"metrics-{uuid.uuid4().hex[:8]}"
    server = make_server(CI_WORKER_NAME=worker, CI_MAX_CONCURRENT_JOBS="1")
    passing, failing = project("passing"), project("failing")
    before = scrape(server)
    assert value(before, "ci_jobs_total", status="succeeded") == 0
    assert value(before, "ci_environment_builds_total", result="succeeded") == 0

    first = submit_async(passing, server)
    assert server.wait_for_status(first, "succeeded", "failed", "error")["status"] == "succeeded"
    # The next job takes the container started ahead, once it waits.
    wait_for(lambda: warm_container_waits(docker_client, worker), what="a warm container")
    second = submit_async(passing, server)
    assert server.wait_for_status(second, "succeeded", "failed", "error")["status"] == "succeeded"
    third = submit_async(failing, server)
    assert server.wait_for_status(third, "succeeded", "failed", "error")["status"] == "failed"

    after = scrape(server)
    assert value(after, "ci_jobs_total", status="succeeded") == 2
    assert value(after, "ci_jobs_total", status="failed") == 1
    assert value(after, "ci_job_duration_seconds_count") == 3
    assert value(after, "ci_job_duration_seconds_sum") > 0
    assert value(after, "ci_job_queue_seconds_count") == 3
    assert value(after, "ci_environment_builds_total", result="succeeded") >= 1
    assert value(after, "ci_environment_cache_hits_total") >= 1  # the second passing job's
    assert value(after, "ci_warm_container_hits_total") >= 1
    assert value(after, "ci_events_total", type="end") == 3
    assert value(after, "ci_events_total", type="log") > 3
    assert (value(after, "ci_jobs_queued"), value(after, "ci_jobs_running")) == (0, 0)
    http = "ci_http_requests_total"
    assert value(after, http, method="POST", route="/jobs", status="201") == 3
    assert value(after, http, method="GET", route="/jobs/{job_id}", status="200") >= 3
    assert value(after, http, method="GET", route="/metrics", status="200") == 1


def test_a_worker_serves_the_counts_of_the_jobs_it_runs(
    tmp_path: Path,
    postgres_database: str,
    runner_image: str,
    project: ProjectFactory,
    docker_client: docker.DockerClient,
) -> None:
    env = server_env(tmp_path, runner_image, {"CI_DATABASE_URL": postgres_database})
    api = ServerProcess(db_path=tmp_path / "ci.db", env=env, args=("--no-worker",))
    port = free_port()
    worker = WorkerProcess(
        f"metrics-{uuid.uuid4().hex[:8]}", env, tmp_path, args=("--metrics-port", str(port))
    )
    try:
        api.start()
        blocking = project("blocking")
        job_id = submit_async(blocking, api)
        wait_for(
            lambda: value(scrape(api), "ci_jobs_queued") == 1, what="the API to count it queued"
        )
        worker.start()
        wait_for(
            lambda: value(scrape(api), "ci_jobs_running") == 1, what="the API to count it running"
        )
        assert api.get(f"/jobs/{job_id}").json()["status"] == "running"
        cancelled = requests.post(
            f"{api.url}/jobs/{job_id}/cancel", headers=api.headers, timeout=30
        )
        assert cancelled.status_code == 200, cancelled.text
        api.wait_for_status(job_id, "cancelled")

        def worker_counts() -> Samples | None:
            scraped = samples(requests.get(f"http://127.0.0.1:{port}/", timeout=10).text)
            return scraped if value(scraped, "ci_jobs_total", status="cancelled") == 1 else None

        scraped = wait_for(worker_counts, what="the worker to count the cancelled job")
        assert value(scraped, "ci_job_queue_seconds_count") == 1
        assert value(scraped, "ci_events_total", type="end") == 1
        assert ("ci_jobs_queued", frozenset()) not in scraped  # the store's: the API's to say
        from_api = scrape(api)
        assert value(from_api, "ci_jobs_total", status="cancelled") == 0  # the worker ended it
        assert (value(from_api, "ci_jobs_queued"), value(from_api, "ci_jobs_running")) == (0, 0)
    finally:
        worker.stop()
        api.stop()


def test_a_flood_of_made_up_methods_and_paths_adds_no_series(make_server: ServerFactory) -> None:
    # uvicorn (h11) accepts any token as a method, and these need no key: each made-up
    # method was a new series of ci_http_requests_total, unbounded.
    server = make_server()
    for n in range(50):
        requests.request(f"X{uuid.uuid4().hex[:8]}", f"{server.url}/jobs", timeout=10)
        requests.get(f"{server.url}/{uuid.uuid4().hex}/{n}", timeout=10)
        requests.get(f"{server.url}/jobs/{uuid.uuid4().hex[:12]}", timeout=10)

    scraped = scrape(server)
    answered = [labels for name, labels in scraped if name == "ci_http_requests_total"]
    methods = {dict(labels)["method"] for labels in answered}
    routes = {dict(labels)["route"] for labels in answered}
    assert methods <= {"GET", "POST", "other"}, methods
    assert routes <= {"/jobs", "/jobs/{job_id}", "/metrics", "/health", "unmatched"}, routes
    assert len(answered) < 20, answered
