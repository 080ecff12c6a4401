"""Failed first: how soon the one failing test's failure is printed, with and without it.

    python bench/failed_first.py [--runs 3]

A real `ci-server` (free port, temporary database) runs real Docker jobs of a project made
here: 200 tests of 50 ms each (10 s in all), then the one failing test, last in collection
order. One submit first (its failure feeds the next ones), then --runs times each,
alternating: `ci submit test` (failed first, the default) and `ci submit test --no-ff`. For
each, the time from pytest's start (the job's `==> ... python -m pytest ...` line reaching `ci`) to
the failing test's FAILED line (pytest -v) reaching `ci`, and the whole submit's wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import ServerProcess, server_env, start_ci

TESTS = 200
SECONDS_EACH = 0.05
FAILING = "tests/test_z.py::test_last_fails"


def make_project(root: Path) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\naddopts = -v\n")
    body = "".join(
        f"def test_{n:03d}():\n    time.sleep({SECONDS_EACH})\n\n\n" for n in range(TESTS)
    )
    (root / "tests" / "test_a.py").write_text(f"import time\n\n\n{body}")
    (root / "tests" / "test_z.py").write_text("def test_last_fails():\n    assert False\n")
    return root


def time_to_failure(server: ServerProcess, project: Path, *args: str) -> tuple[float, float]:
    """(pytest's start to the failure printed, the whole submit), in seconds."""
    start = time.monotonic()
    ci = start_ci("submit", "test", *args, cwd=project, server=server)
    assert ci.stdout is not None
    pytest_started = failed = None
    for line in ci.stdout:
        now = time.monotonic()
        if pytest_started is None and line.startswith("==> ") and "python -m pytest" in line:
            pytest_started = now
        if failed is None and line.startswith(FAILING) and "FAILED" in line:
            failed = now
    ci.wait(timeout=300)
    if pytest_started is None or failed is None:
        assert ci.stderr is not None
        raise SystemExit(f"no pytest start or failure seen ({args}): {ci.stderr.read()[-2000:]}")
    return failed - pytest_started, time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description="How soon a failing test is printed, with and without failed first."
    )
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    image = os.environ.get("CI_RUNNER_IMAGE", "ci-runner:bookworm")
    with tempfile.TemporaryDirectory(prefix="ci-bench-ff-") as tmp:
        folder = Path(tmp)
        env = server_env(folder, image)
        server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
        try:
            project = make_project(folder / "project")
            time_to_failure(server, project)  # the environment, and the failure to feed
            figures: dict[str, list[tuple[float, float]]] = {"failed first": [], "--no-ff": []}
            for _ in range(options.runs):
                figures["failed first"].append(time_to_failure(server, project))
                figures["--no-ff"].append(time_to_failure(server, project, "--no-ff"))
        finally:
            server.stop()
    print(
        f"{TESTS} tests of {SECONDS_EACH * 1000:.0f} ms, then the failing one; {options.runs} runs"
    )
    for name, runs in figures.items():
        first = statistics.median(failure for failure, _ in runs)
        whole = statistics.median(total for _, total in runs)
        print(
            f"{name:>13}: failure printed {first:.2f} s after pytest's start (median), "
            f"submit {whole:.1f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
