"""Shards: a slow suite split over several containers (issue 15).

The fixture tests/fixtures/sleepy_forty (40 tests that each sleep 1 s, in five files of 12,
10, 8, 6 and 4 tests: 40 s in one container) runs as one job, then as groups of 2 and 4
shards, each twice: first on a project with no recorded durations (split by file), then
again, split by the durations the first run recorded. Everything is real but the submission:
a SQLite store, the file blob store, the Worker and the DockerExecutor with warm containers
(CI_RUNNER_IMAGE, default ci-runner:bookworm), in this process. The jobs of a group go into
the store as a submission puts them (one upload under the group's id, `add_jobs`).

For each run: the wall time, from the jobs' insertion to the last one's end; each shard's
run (claimed to ended); the balance, the slowest shard's run over the mean; the wall time
over the one job's. Target: 4 shards at most 0.35 of the one job's time.

    python bench/shards.py [--concurrency 4] [--runs 1] [--keep]

The worker runs `--concurrency` jobs at once (CI_MAX_CONCURRENT_JOBS): on this 2-core
machine the default would be 2, but these tests sleep, so cores do not limit them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import statistics
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.event_ingest import BenchError, run_in_workdir
from ci_server.app import docker_executor
from ci_server.events import EventHub
from ci_server.groups import new_group_id
from ci_server.metrics import Metrics
from ci_server.models import Job, JobStatus, new_job_id, utcnow
from ci_server.settings import Settings
from ci_server.store.blobs import BlobStore
from ci_server.store.factory import open_blob_store, open_store
from ci_server.store.repository import Store
from ci_server.worker.loop import Worker

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sleepy_forty"
OWNER = "bench"
RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Run:
    shards: int
    history: bool
    wall: float
    jobs: list[Job]

    @property
    def runs(self) -> list[float]:
        """Each job's run, claimed to ended, in seconds."""
        return [
            (job.finished_at - job.started_at).total_seconds()
            for job in self.jobs
            if job.finished_at is not None and job.started_at is not None
        ]

    @property
    def balance(self) -> float:
        return max(self.runs) / statistics.mean(self.runs)

    @property
    def tests(self) -> int:
        return sum(job.summary.passed for job in self.jobs if job.summary is not None)


def fixture_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(FIXTURE.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(FIXTURE).as_posix())
    return buffer.getvalue()


class Bench:
    def __init__(self, store: Store, blobs: BlobStore, upload: bytes) -> None:
        self.store = store
        self.blobs = blobs
        self.upload = upload

    async def submit(self, project: str, shards: int) -> list[Job]:
        """The jobs of one submission: one job, or a group of `shards`."""
        created = utcnow()
        base = Job(id="", owner_id=OWNER, project=project, created_at=created, timeout_seconds=600)
        if shards == 1:
            jobs = [base.replace(id=new_job_id())]
        else:
            group = new_group_id()
            jobs = [
                base.replace(id=new_job_id(), group_id=group, shard_index=i, shard_count=shards)
                for i in range(1, shards + 1)
            ]
        await self.blobs.put(jobs[0].upload_key, io.BytesIO(self.upload))
        await self.store.add_jobs(jobs)
        return jobs

    async def run(self, project: str, shards: int, *, history: bool) -> Run:
        started = time.monotonic()
        jobs = await self.submit(project, shards)
        deadline = started + RUN_TIMEOUT
        while True:
            done = [await self.store.get_job(job.id) for job in jobs]
            if all(job.status.is_terminal for job in done):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{shards} shard(s) not done within {RUN_TIMEOUT:g} s")
            await asyncio.sleep(0.05)
        failed = [job for job in done if job.status is not JobStatus.SUCCEEDED]
        if failed:
            raise BenchError(f"job {failed[0].id} ended {failed[0].status}: {failed[0].reason}")
        last = max(job.finished_at for job in done if job.finished_at is not None)
        return Run(shards, history, (last - done[0].created_at).total_seconds(), done)


async def bench(options: argparse.Namespace, workdir: Path) -> list[Run]:
    settings = Settings(
        db_path=workdir / "ci.db",
        runner_image=os.environ.get("CI_RUNNER_IMAGE", "ci-runner:bookworm"),
        max_concurrent_jobs=options.concurrency,
        worker_name="bench-shards",
    )
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        hub = await stack.enter_async_context(EventHub(store, flush_interval=0.05))
        executor = await stack.enter_async_context(docker_executor(settings, Metrics()))
        blobs = await stack.enter_async_context(open_blob_store(settings))
        await stack.enter_async_context(Worker(store, hub, executor, blobs, settings))
        bench = Bench(store, blobs, fixture_zip())
        await bench.run("warm-up", 1, history=False)  # the image's first start, unmeasured
        runs = []
        for _ in range(options.runs):
            for shards in (1, 2, 4):
                project = f"sleepy-{shards}-{uuid.uuid4().hex[:8]}"
                runs.append(await bench.run(project, shards, history=False))
                print_run(runs[-1], runs)
                if shards > 1:
                    runs.append(await bench.run(project, shards, history=True))
                    print_run(runs[-1], runs)
        return runs


def print_run(run: Run, runs: list[Run]) -> None:
    one = statistics.median(r.wall for r in runs if r.shards == 1)
    shard_runs = " ".join(f"{seconds:.1f}" for seconds in run.runs)
    print(
        f"{run.shards} shard(s), {'with' if run.history else 'no'} history: "
        f"wall {run.wall:.1f} s ({run.wall / one:.2f} of one job), "
        f"runs [{shard_runs}] s, balance {run.balance:.2f}, {run.tests} passed",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once (default 4)")
    parser.add_argument("--runs", type=int, default=1, help="rounds of 1, 2 and 4 shards")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()
    return run_in_workdir("shards", options.keep, lambda workdir: _run(options, workdir))


def _run(options: argparse.Namespace, workdir: Path) -> int:
    runs = asyncio.run(bench(options, workdir))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0 if all(run.tests == 40 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
