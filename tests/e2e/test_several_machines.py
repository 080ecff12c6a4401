"""Several processes on one PostgreSQL database, as on several machines: two API processes
(`ci-server --no-worker`) and two workers (`ci-worker`), real Docker, the real `ci`.

The processes share only the database, as hosts would: each has a data folder of its own, and
a worker fetches a job's upload from the database (the default blob store with
CI_DATABASE_URL). Each worker's containers are labelled with its name, so the two remove only
their own although they share this machine's engine.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from ci_server.contents import is_upload_key
from tests.e2e.generated import expect, make_project
from tests.e2e.harness import ServerProcess, WorkerProcess, run_ci, server_env, wait_for
from tests.e2e.test_delta_uploads import submit as submit_contents
from tests.e2e.test_lifecycle import (
    NOISY_LINES,
    TERMINAL,
    ProjectFactory,
    assert_no_container_left,
    containers_of,
    has_line,
    job_log,
    log_lines,
    read_events,
    submit_async,
    submit_hanging,
)
from tests.e2e.test_postgres import fetch

pytestmark = pytest.mark.docker

WORKER_TIMEOUT = 5.0
WORKERS = ("build-1", "build-2")


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    workers: dict[str, WorkerProcess]
    database: str

    def job(self, job_id: str) -> dict[str, Any]:
        return self.b.job(job_id)


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_database: str, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[Cluster]:
    env = server_env(
        tmp_path,
        runner_image,
        {
            "CI_DATABASE_URL": postgres_database,
            "CI_MAX_CONCURRENT_JOBS": "2",
            "CI_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
            "CI_WORKER_GRACE": "2",
        },
    )
    db_path = Path(env["CI_DB_PATH"])
    processes: list[ServerProcess | WorkerProcess] = []
    workers: dict[str, WorkerProcess] = {}
    """The cluster's workers as the tests leave them (a test may restart one)."""
    try:
        a = ServerProcess(db_path=db_path, env=env, args=("--no-worker",)).start()
        processes.append(a)
        b = ServerProcess(db_path=db_path, env=env, args=("--no-worker",), api_key=a.api_key)
        processes.append(b.start())
        for name in WORKERS:
            env_of_worker = {**env, "CI_DATA_DIR": str(tmp_path / name)}
            workers[name] = WorkerProcess(name, env_of_worker, tmp_path).start()
        yield Cluster(a, b, workers, postgres_database)
    finally:
        for process in [*processes, *workers.values()]:
            process.stop()


def test_jobs_submitted_through_both_apis_all_run_once_on_both_workers(
    cluster: Cluster, project: ProjectFactory
) -> None:
    passing = project("passing")
    ids = [submit_async(passing, (cluster.a, cluster.b)[n % 2]) for n in range(30)]

    def all_finished() -> list[dict[str, Any]] | None:
        jobs = cluster.b.get("/jobs", params={"limit": 100}).json()
        return jobs if all(job["status"] in TERMINAL for job in jobs) else None

    jobs = wait_for(all_finished, timeout=600, interval=1, what="the 30 jobs to finish")
    assert sorted(job["job_id"] for job in jobs) == sorted(ids)
    assert {job["status"] for job in jobs} == {"succeeded"}, jobs
    assert {job["worker"] for job in jobs} == set(WORKERS)  # both ran some
    # Each ran once: one `running` status and one end per job, in the database.
    runs = fetch(
        cluster.database,
        "SELECT job_id, count(*) FILTER (WHERE data->>'status' = 'running') AS running, "
        "count(*) FILTER (WHERE type = 'end') AS ends FROM events GROUP BY job_id",
    )
    assert sorted(row["job_id"] for row in runs) == sorted(ids)
    assert {(row["running"], row["ends"]) for row in runs} == {(1, 1)}
    # Their uploads, kept in the database for the workers, went with them (the files'
    # contents stay, for the next submits to reuse).
    wait_for(
        lambda: (
            not [
                row["key"]
                for row in fetch(cluster.database, "SELECT key FROM blobs")
                if is_upload_key(row["key"])
            ]
        ),
        timeout=10,
        what="the uploads of the finished jobs to be deleted",
    )

    # `ci list --json` names the worker of each job; `ci-admin workers` lists both, alive.
    listed = run_ci("list", "--json", cwd=passing, server=cluster.a)
    assert listed.returncode == 0, listed.stderr
    assert {j["job_id"]: j["worker"] for j in json.loads(listed.stdout)} == {
        j["job_id"]: j["worker"] for j in jobs
    }
    workers = cluster.a.admin("workers", "--json")
    assert workers.returncode == 0, workers.stderr
    states = {w["name"]: (w["state"], w["running_jobs"]) for w in json.loads(workers.stdout)}
    assert states == {name: ("alive", []) for name in WORKERS}


def test_a_client_of_one_api_follows_a_job_submitted_through_the_other(
    cluster: Cluster, project: ProjectFactory
) -> None:
    noisy = project("noisy")
    job_id = submit_async(noisy, cluster.a)

    # A client reads some of the live log from A, then resumes on B with Last-Event-ID.
    seen = read_events(
        cluster.a, job_id, params={"after": 0}, stop=lambda e: has_line(e, "line 1200")
    )
    resumed = read_events(cluster.b, job_id, headers={"Last-Event-ID": str(seen[-1]["seq"])})
    assert [e["seq"] for e in seen + resumed] == list(range(1, len(seen) + len(resumed) + 1))
    assert resumed[-1]["type"] == "end"

    # `ci wait --all` through B prints every line of the job, as A has them.
    through_b = run_ci("wait", "--all", job_id, cwd=noisy, server=cluster.b)
    assert through_b.returncode == 0, through_b.stderr
    numbers = [int(n) for n in re.findall(r"^line (\d+)$", through_b.stdout, re.MULTILINE)]
    assert numbers == list(range(NOISY_LINES))
    through_a = run_ci("wait", "--all", job_id, cwd=noisy, server=cluster.a)
    assert through_a.stdout == through_b.stdout
    assert log_lines(job_log(cluster.a, job_id)) == log_lines(seen + resumed)


def test_a_cancel_through_one_api_stops_the_job_a_worker_runs(
    cluster: Cluster, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    job_id, _ = submit_hanging(cluster.a, project("hanging"))
    assert cluster.job(job_id)["worker"] in WORKERS

    cancel = run_ci("cancel", job_id, cwd=project("passing"), server=cluster.b)

    # The answer comes once the worker has stopped the job (or after 10 s, still running).
    assert cancel.returncode == 0, cancel.stderr
    assert f"Job {job_id} cancelled" in cancel.stderr, cancel.stderr
    job = cluster.a.job(job_id)
    assert (job["status"], job["reason"]) == ("cancelled", "cancelled by user")
    assert_no_container_left(docker_client, job_id)


def test_a_killed_worker_s_job_ends_in_error_and_its_restart_removes_the_container(
    cluster: Cluster, project: ProjectFactory, docker_client: docker.DockerClient
) -> None:
    job_id, _ = submit_hanging(cluster.a, project("hanging"))
    name = str(cluster.job(job_id)["worker"])
    killed = cluster.workers[name]

    killed.kill()

    def ended() -> dict[str, Any] | None:
        job = cluster.job(job_id)
        return job if job["status"] in TERMINAL else None

    job = wait_for(ended, timeout=WORKER_TIMEOUT + 15, what="the killed worker's job to end")
    assert (job["status"], job["reason"]) == ("error", f"worker {name} stopped responding")
    end = job_log(cluster.b, job_id)[-1]
    assert (end["type"], end["reason"]) == ("end", f"worker {name} stopped responding")
    assert containers_of(docker_client, job_id), "the killed worker's container is left"

    restarted = WorkerProcess(name, killed.env, killed.log_dir).start()
    cluster.workers[name] = restarted
    assert_no_container_left(docker_client, job_id)
    assert cluster.job(job_id)["status"] == "error"  # its end stands


def test_stopping_an_api_process_leaves_running_jobs_running(
    cluster: Cluster, project: ProjectFactory
) -> None:
    blocking = project("blocking")
    job_id = submit_async(blocking, cluster.a)
    wait_for(
        lambda: cluster.job(job_id)["status"] == "running", timeout=120, what="the job running"
    )

    cluster.a.stop(signal.SIGTERM)
    assert cluster.a.process is not None
    assert cluster.a.process.returncode in (0, -signal.SIGTERM), cluster.a.log()

    followed = run_ci("wait", "--all", job_id, cwd=blocking, server=cluster.b)
    assert followed.returncode == 0, followed.stderr
    assert "1 passed" in followed.stdout, followed.stdout
    job = cluster.job(job_id)
    assert (job["status"], job["reason"]) == ("succeeded", None)


def test_contents_sent_through_one_api_are_reused_through_the_other_and_run_on_any_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Uploads that send only what changed, on several machines: the contents are in the
    database's blob store, per owner, so a submit through API B reuses what went through A,
    and whichever worker claims the job writes its workspace from them (each worker keeps
    the project's last tree in its own data folder)."""
    root = tmp_path / "generated"
    expected = make_project(root, 200, 200 * 1000)
    sent, total, _ = submit_contents(root, cluster.a)
    assert sent == total == 204

    workers = set()
    for n, api in enumerate((cluster.b, cluster.a, cluster.b, cluster.a)):
        (root / "data" / "note.txt").write_text(f"change {n}\n")
        expected["text"]["data/note.txt"] = f"change {n}\n"
        expect(root, expected)
        sent, total, _ = submit_contents(root, api)  # the job's tests check every file
        assert (sent, total) == (2, 204)
        workers.add(cluster.b.get("/jobs", params={"limit": 1}).json()[0]["worker"])
    # The contents and the refs of the submitted trees are in the database, one owner's.
    keys = [row["key"] for row in fetch(cluster.database, "SELECT key FROM blobs")]
    owners = {key.split(".")[1] for key in keys if key.startswith(("c.", "r."))}
    assert len(owners) == 1, keys
    assert sum(key.startswith("r.") for key in keys) == 5  # a tree per submit
    assert workers <= set(WORKERS)
