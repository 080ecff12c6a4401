"""Uploads that send only what changed (issue 17): bytes sent and wall time of `ci submit test`.

    python bench/delta.py [--files 20000] [--mb 200] [--runs 3] [--keep]

A real `ci-server` (SQLite, file blob store, Docker; CI_MAX_FILES and CI_MAX_UPLOAD_BYTES
raised so the zip fits) and the real `ci`. A generated project (tests/e2e/generated.py:
--files files of random bytes, --mb in all, a test checking it) is submitted by contents
(first: everything; second: one file changed; third: nothing changed) and as a zip
(`ci submit test --zip`, what every submit sent before) with one file changed. The target:
the second submit within 1.5 times the warm submit of a tiny project (5 files), measured
on the same server (median of --runs). What the project's own tests cost is measured too,
by `docker run` in the same image and box (no upload, no server): pytest in the read-only
source as it is (no job can cost less), and after copying it to /tmp as jobs did before
their project was an overlay (runner/scratch.py). The server runs with `--log-level
debug`: the times of each step of the second submits (ci_server/stopwatch.py) are printed,
as medians. Figures go in README.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.e2e when run as a script

from bench.event_ingest import run_in_workdir  # noqa: E402
from bench.speed import BenchError, docker_run  # noqa: E402
from tests.e2e.generated import PYPROJECT, TEST, expect, make_project  # noqa: E402
from tests.e2e.harness import ServerProcess, run_ci, server_env  # noqa: E402

SENT = re.compile(r"^Sent ([\d,]+) of ([\d,]+) files \(([\d.]+ \w+) of ([\d.]+ \w+)\)", re.M)
ZIPPED = re.compile(r"^Uploading (\d+) files \(([\d.]+ \w+), ([\d.]+ \w+) zipped\)", re.M)
IMAGE = "ci-runner:bookworm"
STEP = re.compile(r"DEBUG ci_server\.\w+: (?:job|tree) \w+: (.+?) in ([\d.]+) s$", re.M)
MANIFEST_SIZE = re.compile(r"manifest of \d+ files")
PYTEST = "python -m pytest -p no:cacheprovider -q"
TESTS_IN_DOCKER = {
    "in place": f"cd /src && {PYTEST}",
    "copy + pytest": f"cp -R /src/. /tmp/project && cd /tmp/project && {PYTEST}",
}
"""pytest in the read-only source; and after a copy, as a job's script did before the
overlay (runner/scripts.py), without the server."""


def submit(root: Path, server: ServerProcess, *args: str) -> tuple[float, str]:
    """Wall time of a passing `ci submit test`, and what it said it sent."""
    started = time.monotonic()
    result = run_ci("submit", "test", *args, cwd=root, server=server, timeout=1800)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise BenchError(f"ci submit test exited {result.returncode}:\n{result.stderr[-3000:]}")
    match = SENT.search(result.stderr) or ZIPPED.search(result.stderr)
    if match is None:
        raise BenchError(f"no Sent/Uploading line:\n{result.stderr}")
    return wall, match.group(0)


def tests_in_docker(root: Path, how: str) -> float:
    """Wall time of `docker run` of the project's tests (TESTS_IN_DOCKER[how]): the source
    mounted read-only; read-only root, a /tmp, no network, not root."""
    box = ["--read-only", "--tmpfs", "/tmp:size=1g,exec", "--network", "none", "-u", "65534"]
    volume = ["-v", f"{root.resolve()}:/src:ro"]
    return docker_run([*box, *volume, IMAGE, "sh", "-c", TESTS_IN_DOCKER[how]]).wall


def step_times(log: str) -> dict[str, list[float]]:
    """The server's step timings in its debug log (ci_server/stopwatch.py), by step."""
    steps: dict[str, list[float]] = {}
    for step, seconds in STEP.findall(log):
        steps.setdefault(MANIFEST_SIZE.sub("manifest", step), []).append(float(seconds))
    return steps


LIGHT_TEST = """
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_changed_file_is_as_sent():
    assert (ROOT / "data" / "note.txt").read_text() == (ROOT / "expect.txt").read_text()
"""
LIGHT_PYPROJECT = """[project]
name = "generated"
version = "0"

[tool.pytest.ini_options]
testpaths = ["tests"]
"""


def lighten(root: Path) -> None:
    """The same files, with tests as cheap as the tiny project's: they check the changed
    file only, and pytest looks for tests in tests/ only (testpaths), not among the 20,000
    data files. What a submit of it costs beyond the tiny project's is the service's."""
    (root / "tests" / "test_project.py").write_text(LIGHT_TEST)
    (root / "pyproject.toml").write_text(LIGHT_PYPROJECT)


def unlighten(root: Path) -> None:
    """The generated project's own tests again (make_project's)."""
    (root / "tests" / "test_project.py").write_text(TEST)
    (root / "pyproject.toml").write_text(PYPROJECT)


def touch_light(root: Path, n: int) -> None:
    (root / "data" / "note.txt").write_text(f"change {n}\n")
    (root / "expect.txt").write_text(f"change {n}\n")


def touch_one(root: Path, expected: dict[str, Any], n: int) -> None:
    """Change one file, and the expectations the project's test checks it against."""
    (root / "data" / "note.txt").write_text(f"change {n}\n")
    expected["text"]["data/note.txt"] = f"change {n}\n"
    expect(root, expected)


def run(options: argparse.Namespace, workdir: Path) -> int:
    env = server_env(
        workdir / "server",
        IMAGE,
        {"CI_MAX_FILES": str(options.files + 100), "CI_MAX_UPLOAD_BYTES": str(2 * 1024**3)},
    )
    server = ServerProcess(
        db_path=Path(env["CI_DB_PATH"]), env=env, args=("--log-level", "debug")
    ).start()
    assert server.log_path is not None
    rows: list[tuple[str, str, str]] = []
    try:
        tiny = workdir / "tiny"
        tiny_expected = make_project(tiny, 5, 5_000)
        submit(tiny, server)  # its environment, a warm container
        tiny_walls = []
        logged = len(server.log_path.read_text())
        for n in range(options.runs):
            touch_one(tiny, tiny_expected, n)
            tiny_walls.append(submit(tiny, server)[0])
        tiny_steps = step_times(server.log_path.read_text()[logged:])
        tiny_warm = statistics.median(tiny_walls)
        rows.append(("tiny project (5 files), one file changed", f"{tiny_warm:.2f} s", ""))

        big = workdir / "big"
        started = time.monotonic()
        expected = make_project(big, options.files, options.mb * 1024**2)
        print(f"generated in {time.monotonic() - started:.1f} s", file=sys.stderr)
        wall, said = submit(big, server)
        rows.append(("big project, first submit", f"{wall:.2f} s", said))
        seconds = []
        logged = len(server.log_path.read_text())
        for n in range(options.runs):
            touch_one(big, expected, n)
            wall, said = submit(big, server)
            seconds.append(wall)
        steps = step_times(server.log_path.read_text()[logged:])
        second = statistics.median(seconds)
        rows.append(
            (f"big project, one file changed (median of {options.runs})", f"{second:.2f} s", said)
        )
        wall, said = submit(big, server)
        rows.append(("big project, nothing changed", f"{wall:.2f} s", said))
        bare = {}
        for how in TESTS_IN_DOCKER:
            bare[how] = statistics.median(tests_in_docker(big, how) for _ in range(options.runs))
            rows.append((f"big project: docker run of its tests ({how})", f"{bare[how]:.2f} s", ""))
        rows.append(
            ("second submit / tiny warm submit (target <= 1.5)", f"{second / tiny_warm:.2f}", "")
        )
        floor = bare["in place"]
        rows.append(
            ("second submit - docker run of its tests in place", f"{second - floor:.2f} s", "")
        )
        lighten(big)
        touch_light(big, -1)
        submit(big, server)  # its environment (another pyproject.toml)
        light = []
        logged = len(server.log_path.read_text())
        for n in range(options.runs):
            touch_light(big, n)
            light.append(submit(big, server)[0])
        light_steps = step_times(server.log_path.read_text()[logged:])
        light_second = statistics.median(light)
        what = f"same files, tests as cheap as the tiny project's (median of {options.runs})"
        rows.append((what, f"{light_second:.2f} s", ""))
        rows.append(("  / tiny warm submit", f"{light_second / tiny_warm:.2f}", ""))
        # The zip last: each leaves a 200 MB workspace that the worker removes after the
        # job's end, in the background, which slowed whatever came next by a third.
        unlighten(big)
        zips = []
        for n in range(options.runs):
            touch_one(big, expected, 100 + n)
            wall, said = submit(big, server, "--zip")
            zips.append(wall)
        rows.append(
            (
                f"big project as a zip, one file changed (median of {options.runs})",
                f"{statistics.median(zips):.2f} s",
                said,
            )
        )
        for step, times in steps.items():
            cheap, small = (
                statistics.median(t.get(step, [0.0])) for t in (light_steps, tiny_steps)
            )
            rows.append(
                (
                    f"  server step: {step} (median)",
                    f"{statistics.median(times):.3f} s",
                    f"cheap tests {cheap:.3f} s, tiny project {small:.3f} s",
                )
            )
    finally:
        server.stop()
    width = max(len(row[0]) for row in rows)
    for what, value, said in rows:
        print(f"{what:<{width}}  {value:>8}  {said}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    options = parser.parse_args(argv)
    return run_in_workdir("delta", options.keep, lambda workdir: run(options, workdir))


if __name__ == "__main__":
    sys.exit(main())
