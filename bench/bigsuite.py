"""Big-suite benchmark: a suite of many fast tests through `ci`, against pytest alone.

    python bench/bigsuite.py [--tests 50000] [--runs 3] [--verbose] [--keep]

A generated project of --tests trivial tests (files of 500), run on a real `ci-server`
(default settings: one CPU per container) after a warm-up submit that builds its
environment. Then, --runs times each, alternating (each kind goes first in turn):

* `docker run --rm` of `pytest -q` in the same environment image, with the job's limits
  (CPU, memory, processes), its user and no network, the source mounted read-only and
  copied to /tmp first as a job does: pytest alone, in the same environment;
* `ci submit test`, its output read live (a pipe, as `ci submit test | tee log` would);
* `ci submit test --async`, then waiting for the job's end (no watcher), for reference.

It prints the median wall time of each and the ratio of `ci submit test` to pytest alone
(goal: at most 1.15). Wall times on a shared machine move with its load, so it prints
what explains them too: the CPU time pytest used in each (the suite's conftest.py prints
it), the CPU time of `ci` and of the server during a live run, and the time from pytest's
last line to `ci` exiting (the report read and stored, the end event). With --verbose,
both run pytest -v instead (`ci submit test -- -v`): a line per test, the heaviest log a
suite makes. The environment image and every container are removed at the end. Exit
status 0 when it ran, 2 when it could not.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e.harness when run as a script

from bench.event_ingest import cpu_seconds  # noqa: E402
from bench.speed import (  # noqa: E402
    DEFAULT_IMAGE,
    Bench,
    BenchError,
    Table,
    connect_docker,
    docker_run,
    environment_image,
    job_events,
    load_average,
    seconds,
    settle,
    spread,
    submit,
    timestamp,
    write_project,
)
from ci_client.client import ClientError  # noqa: E402
from ci_server.settings import Settings  # noqa: E402
from tests.e2e.harness import ServerProcess, run_ci, wait_for  # noqa: E402

TESTS_PER_FILE = 500
PYTEST_INI = "[pytest]\ntestpaths = tests\n"
"""Its own rootdir: the repository's pytest.ini is never picked up."""
CONFTEST = """\
import time


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"bench: pytest used {time.process_time():.2f} s of CPU")
"""
PYTEST_CPU = re.compile(r"^bench: pytest used ([\d.]+) s of CPU$", re.MULTILINE)
GOAL = 1.15
DEADLINE = 1800.0
"""Of one run: a big suite on a loaded machine may take minutes."""


@dataclass(frozen=True)
class Sample:
    wall: float
    pytest_cpu: float | None = None
    client_cpu: float | None = None
    server_cpu: float | None = None
    tail: float | None = None
    """From pytest's last line (its publication by the server) to `ci` exiting."""


def pytest_cpu(output: str) -> float | None:
    match = PYTEST_CPU.search(output)
    return float(match.group(1)) if match else None


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_file(first: int, count: int) -> str:
    return "".join(
        f"\n\ndef test_{n:06}() -> None:\n    assert {n} + 1 == {n + 1}\n"
        for n in range(first, first + count)
    )


def write_suite(bench: Bench, tests: int) -> Path:
    files = {"pytest.ini": PYTEST_INI, "conftest.py": CONFTEST}
    for first in range(0, tests, TESTS_PER_FILE):
        count = min(TESTS_PER_FILE, tests - first)
        files[f"tests/test_{first // TESTS_PER_FILE:04}.py"] = test_file(first, count)
    return write_project(bench.workdir / "suite", bench.requirements("pytest"), files)


def direct_run(project: Path, image: str, pytest_args: list[str]) -> Sample:
    """pytest alone, in a container like the job's: same image, limits, user, no network."""
    limits = Settings().container_limits
    arguments = [
        *("-v", f"{project}:/src:ro", "--user", "1000:1000", "--network", "none"),
        *("--cpus", str(limits.cpus), "--memory", str(limits.memory_bytes)),
        *("--memory-swap", str(limits.memory_bytes), "--pids-limit", str(limits.pids)),
        *("--cap-drop", "ALL", "--security-opt", "no-new-privileges"),
        image,
        "sh",
        "-c",
        "cp -R /src/. /tmp/project && cd /tmp/project && "
        f"python -m pytest {' '.join(pytest_args)} -p no:cacheprovider",
    ]
    run = docker_run(arguments, timeout=DEADLINE)
    return Sample(run.wall, pytest_cpu(run.stdout))


def live_run(server: ServerProcess, project: Path, ci_args: list[str]) -> tuple[str, Sample]:
    """`ci submit test`, its output read live; with what it cost the client and the server."""
    assert server.process is not None
    client_before, server_before = children_cpu(), cpu_seconds(server.process.pid)
    job = submit(project, server, *ci_args, timeout=DEADLINE)
    client_cpu, server_after = children_cpu() - client_before, cpu_seconds(server.process.pid)
    last_line = [e for e in job_events(server, job.job_id) if e.data.get("stream") == "stdout"]
    tail = job.ended_at - timestamp(last_line[-1].data["time"]) if last_line else None
    server_cpu = (
        None if server_before is None or server_after is None else server_after - server_before
    )
    return job.job_id, Sample(job.wall, pytest_cpu(job.stdout), client_cpu, server_cpu, tail)


def async_run(server: ServerProcess, project: Path, ci_args: list[str]) -> tuple[str, Sample]:
    """`ci submit test --async`, then the job's end seen by polling: no watcher at all."""
    started = time.monotonic()
    result = run_ci("submit", "test", "--async", *ci_args, cwd=project, server=server)
    if result.returncode != 0:
        raise BenchError(f"`ci submit test --async` exited {result.returncode}: {result.stderr}")
    job_id = result.stdout.split()[-1]

    def ended() -> bool:
        return server.job(job_id)["end_time"] is not None

    wait_for(ended, timeout=DEADLINE, interval=0.1, what=f"job {job_id} to end")
    return job_id, Sample(time.monotonic() - started)


def median(samples: list[Sample], value: Callable[[Sample], float | None]) -> str:
    values = [v for v in map(value, samples) if v is not None]
    return seconds(statistics.median(values)) if values else "n/a"


def measure(bench: Bench, tests: int, runs: int, verbose: bool, table: Table) -> None:
    server = bench.start_server("bigsuite")
    project = write_suite(bench, tests)
    ci_args = ["--", "-v"] if verbose else []
    pytest_args = ["-v"] if verbose else ["-q"]
    warm_up = submit(project, server, *ci_args, timeout=DEADLINE)
    settle(bench.docker, server, warm_up.job_id)
    image = environment_image(bench.docker, warm_up.stderr)
    bench.environments.add(image)

    samples: dict[str, list[Sample]] = {"direct": [], "ci": [], "async": []}

    def direct() -> None:
        samples["direct"].append(direct_run(project, image, pytest_args))

    def live() -> None:
        job_id, sample = live_run(server, project, ci_args)
        samples["ci"].append(sample)
        settle(bench.docker, server, job_id)

    def detached() -> None:
        job_id, sample = async_run(server, project, ci_args)
        samples["async"].append(sample)
        settle(bench.docker, server, job_id)

    kinds: list[Callable[[], None]] = [direct, live, detached]
    for n in range(runs):
        for kind in kinds[n % 3 :] + kinds[: n % 3]:
            kind()

    walls = {kind: [sample.wall for sample in values] for kind, values in samples.items()}
    alone = statistics.median(walls["direct"])
    how = "-v" if verbose else "-q"
    table.section(f"{tests:,} tests, pytest {how}, {runs} runs each (image {image})")
    table.add(f"`docker run` pytest {how} alone, same image and limits", spread(walls["direct"]))
    table.add("`ci submit test`, output read live", spread(walls["ci"]))
    table.add("`ci submit test --async`, to the job's end", spread(walls["async"]))
    ratio = statistics.median(walls["ci"]) / alone
    table.add(f"ratio `ci submit test` / pytest alone (goal <= {GOAL})", f"{ratio:.2f}")
    table.add("ratio --async / pytest alone", f"{statistics.median(walls['async']) / alone:.2f}")
    table.section("what explains them (medians)")
    table.add("CPU time of pytest alone", median(samples["direct"], lambda s: s.pytest_cpu))
    table.add("CPU time of pytest in the job", median(samples["ci"], lambda s: s.pytest_cpu))
    table.add("CPU time of `ci`, live", median(samples["ci"], lambda s: s.client_cpu))
    table.add("CPU time of the server, live run", median(samples["ci"], lambda s: s.server_cpu))
    table.add("pytest's last line -> `ci` exited", median(samples["ci"], lambda s: s.tail))
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tests", type=int, default=50_000, help="tests in the suite")
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind")
    parser.add_argument("--verbose", action="store_true", help="pytest -v on both sides")
    parser.add_argument("--image", default=DEFAULT_IMAGE, help="runner image (%(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args(argv)
    if options.tests < 1 or options.runs < 1:
        parser.error("--tests and --runs must be at least 1")

    table = Table()
    table.section("machine")
    table.add("load average 1/5/15 min, at start", load_average())
    with contextlib.ExitStack() as cleanup:
        if options.keep:
            workdir = Path(tempfile.mkdtemp(prefix="ci-bench-bigsuite-"))
            print(f"keeping {workdir} (database, server log)", file=sys.stderr)
        else:
            temporary = tempfile.TemporaryDirectory(
                prefix="ci-bench-bigsuite-", ignore_cleanup_errors=True
            )
            workdir = Path(cleanup.enter_context(temporary))
        bench: Bench | None = None
        try:
            bench = Bench(workdir, options.image, connect_docker(options.image))
            measure(bench, options.tests, options.runs, options.verbose, table)
        except (BenchError, ClientError, subprocess.TimeoutExpired) as e:
            print(f"bigsuite: {e}", file=sys.stderr)
            return 2
        finally:
            if bench is not None:
                bench.close()
    table.section("machine, after")
    table.add("load average 1/5/15 min, at end", load_average())
    table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
