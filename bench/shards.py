"""Shards: a slow suite split over several containers (issue 15).

    python bench/shards.py [--concurrency 4] [--runs 1] [--keep]

The fixture tests/fixtures/sleepy_forty (40 tests that each sleep 1 s, in five files of 12,
10, 8, 6 and 4 tests: 40 s in one container) goes through the real `ci` to a real
`ci-server` (CI_RUNNER_IMAGE, default ci-runner:bookworm; warm containers on): once as one
job, then with `--shards 2` and `--shards 4`, each twice: first as a project with no
recorded durations (split by file), then again, split by the durations the first run
recorded. A warm-up submit builds the environment first, unmeasured; the environment
images the server built are removed at the end.

For each run: the wall time of `ci submit test` (upload, the jobs, their output streamed,
to its exit); each job's run (started to ended, from GET /groups/{id}); the balance, the
slowest job's run over the mean; the wall time over the one job's. Target: 4 shards at most
0.35 of the one job's time.

The server runs `--concurrency` jobs at once (CI_MAX_CONCURRENT_JOBS): on this 2-core
machine the default would be 2, but these tests sleep, so cores do not limit them. Exit
status 0 when every run passed its 40 tests, 1 when one did not, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import docker

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from bench.event_ingest import BenchError, run_in_workdir  # noqa: E402
from ci_server.runner.executor import OWNER_LABEL  # noqa: E402
from ci_server.settings import Settings  # noqa: E402
from tests.e2e.harness import ServerProcess, run_ci, server_env  # noqa: E402

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "sleepy_forty"
GROUP_ID = re.compile(r"^Group (g-[0-9a-f]{12}) \w+: (\d+) passed", re.M)
JOB_ID = re.compile(r"^Job ([0-9a-f]{12}) \w+: (\d+) passed", re.M)
RUN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Run:
    shards: int
    history: bool
    wall: float
    runs: list[float]
    """Each job's run, started to ended, in seconds."""
    passed: int

    @property
    def balance(self) -> float:
        return max(self.runs) / statistics.mean(self.runs)


def job_run(job: dict[str, object]) -> float:
    start, end = job["start_time"], job["end_time"]
    assert isinstance(start, str) and isinstance(end, str)
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def submit(server: ServerProcess, project: Path, shards: int, *, history: bool) -> Run:
    """`ci submit test` of `project` in `shards` (1: one job), timed to its exit."""
    args = ["--shards", str(shards)] if shards > 1 else []
    started = time.monotonic()
    result = run_ci("submit", "test", *args, cwd=project, server=server, timeout=RUN_TIMEOUT)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(
            f"ci submit test {' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}"
        )
    if shards == 1:
        found = JOB_ID.search(result.stderr)
        if found is None:
            raise BenchError(f"no job summary in:\n{result.stderr[-2000:]}")
        jobs = [server.job(found.group(1))]
    else:
        found = GROUP_ID.search(result.stderr)
        if found is None:
            raise BenchError(f"no group summary in:\n{result.stderr[-2000:]}")
        response = server.get(f"/groups/{found.group(1)}")
        response.raise_for_status()
        jobs = response.json()["jobs"]
    return Run(shards, history, wall, [job_run(job) for job in jobs], int(found.group(2)))


def bench(options: argparse.Namespace, workdir: Path) -> list[Run]:
    image = os.environ.get("CI_RUNNER_IMAGE", "ci-runner:bookworm")
    extra = {"CI_MAX_CONCURRENT_JOBS": str(options.concurrency)}
    env = server_env(workdir, image, extra)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    try:
        warm_up = shutil.copytree(FIXTURE, workdir / "warm-up")
        (warm_up / "tests" / "test_alpha.py").unlink()  # a shorter suite, same environment
        submit(server, warm_up, 1, history=False)
        runs: list[Run] = []
        for _ in range(options.runs):
            for shards in (1, 2, 4):
                # A project of its own: its first run has no recorded durations.
                project = shutil.copytree(FIXTURE, workdir / f"sleepy-{uuid.uuid4().hex[:8]}")
                for history in (False, True) if shards > 1 else (False,):
                    runs.append(submit(server, project, shards, history=history))
                    print_run(runs[-1], runs)
        return runs
    finally:
        server.stop()
        remove_environments(Settings(db_path=Path(env["CI_DB_PATH"])).instance_id)


def remove_environments(owner: str) -> None:
    """The environment images the bench's server built (labelled with its instance)."""
    client = docker.from_env()
    try:
        for image in client.images.list(filters={"label": f"{OWNER_LABEL}={owner}"}):
            client.images.remove(image.id, force=True)
    finally:
        client.close()


def print_run(run: Run, runs: list[Run]) -> None:
    one = statistics.median(r.wall for r in runs if r.shards == 1)
    job_runs = " ".join(f"{seconds:.1f}" for seconds in run.runs)
    print(
        f"{run.shards} shard(s), {'with' if run.history else 'no'} history: "
        f"wall {run.wall:.1f} s ({run.wall / one:.2f} of one job), "
        f"jobs' runs [{job_runs}] s, balance {run.balance:.2f}, {run.passed} passed",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs at once (default 4)")
    parser.add_argument("--runs", type=int, default=1, help="rounds of 1, 2 and 4 shards")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    options = parser.parse_args()

    def run(workdir: Path) -> int:
        print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
        runs = bench(options, workdir)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        return 0 if all(run.passed == 40 for run in runs) else 1

    return run_in_workdir("shards", options.keep, run)


if __name__ == "__main__":
    sys.exit(main())
