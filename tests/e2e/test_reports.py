"""End to end: what `ci` shows of a job's tests, with a real server, the real `ci` and Docker.

A project's counts must be pytest's own (xfailed, xpassed, reruns, collection errors with
their message). A job's report is the tests' own work, so tests here forge it: after pytest
has written it, a conftest hook (`pytest_unconfigure`) writes a lie, a bomb or a huge file
where the server reads it, or tries to put a link to a host file, a FIFO or a directory
there (that file is mounted from the host: it cannot be replaced). The server must never
read a host file, never hang, keep only so much, say in the job's log what it refused or
capped, and flag counts that contradict the exit code wherever it shows them.
"""

from __future__ import annotations

import json
import re
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.e2e.harness import ServerProcess, copy_fixture, run_ci, server_env
from tests.e2e.test_cli import describe, job_id_from_submit

pytestmark = pytest.mark.docker

MAX_RESULTS = 1000
MAX_REPORT_BYTES = 1_000_000
JOB_TIMEOUT = 600.0
"""Generous: the first job of a project builds its environment with pip on a loaded machine."""
PYTEST_LINE = re.compile(r"^=+ (?P<counts>\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s =+$", re.M)
REPORT = "/ci-output/junit.xml"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    """One server for the module: its projects share one environment."""
    limits = {"CI_MAX_TEST_RESULTS": str(MAX_RESULTS), "CI_MAX_REPORT_BYTES": str(MAX_REPORT_BYTES)}
    env = server_env(tmp_path_factory.mktemp("reports"), runner_image, limits)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Run:
    job_id: str
    exit_code: int
    stdout: str
    stderr: str
    """`[ci]` lines and the final line, `Job <id> <status>: <counts> ...`."""

    @property
    def final_line(self) -> str:
        return self.stderr.strip().splitlines()[-1]


def submit(project: Path, server: ServerProcess) -> Run:
    result = run_ci("submit", "test", cwd=project, server=server, timeout=JOB_TIMEOUT)
    assert result.returncode in (0, 1), describe(result)
    return Run(job_id_from_submit(result.stderr), result.returncode, result.stdout, result.stderr)


def show(server: ServerProcess, job_id: str, cwd: Path) -> str:
    shown = run_ci("show", job_id, cwd=cwd, server=server, timeout=120)
    assert shown.returncode == 0, describe(shown)
    return shown.stdout


def listed_tests(server: ServerProcess, job_id: str, cwd: Path) -> str:
    """The TESTS column of the job's row in `ci list`."""
    listed = run_ci("list", cwd=cwd, server=server, timeout=60)
    assert listed.returncode == 0, describe(listed)
    header, *rows = listed.stdout.splitlines()
    (row,) = (row for row in rows if row.startswith(job_id))
    return row[header.index("TESTS") :]


# -- counts as pytest counts them --------------------------------------------------------------


def test_show_counts_every_outcome_as_pytest_prints_them(
    server: ServerProcess, tmp_path: Path
) -> None:
    project = copy_fixture("outcomes", tmp_path)

    run = submit(project, server)

    assert run.exit_code == 1, run.stderr
    printed = PYTEST_LINE.search(run.stdout)
    assert printed, run.stdout
    pytest_says = {
        {"error": "errors"}.get(word, word): int(count)
        for count, word in (item.split(" ") for item in printed["counts"].split(", "))
    }
    assert pytest_says == {
        "failed": 1,
        "passed": 2,
        "skipped": 1,
        "xfailed": 1,
        "xpassed": 1,
        "errors": 2,
        "rerun": 1,
    }, printed.group(0)
    shown = show(server, run.job_id, project)
    tests_line = next(line for line in shown.splitlines() if line.startswith("  tests"))
    shown_counts = {
        word: int(count)
        for count, word in (item.split(" ") for item in tests_line.split(None, 1)[1].split(", "))
    }
    # The test that failed, then passed on its rerun is flaky, not one of the passes.
    assert shown_counts == {**pytest_says, "passed": 1, "flaky": 1}, shown
    assert run.final_line.startswith(
        f"Job {run.job_id} failed: 1 passed, 1 failed, 2 errors, 1 skipped, 1 xfailed, "
        "1 xpassed, 1 flaky, 1 rerun in "
    ), run.stderr
    failures = shown[shown.index("Failures:") : shown.index("Flaky")].splitlines()
    assert (
        "  FLAKY tests/test_outcomes.py::test_flaky_passes_the_second_time: "
        "failed, then passed on rerun 1"
    ) in shown, shown
    assert (
        "  ERROR collecting tests/test_needs_a_module.py: "
        "ModuleNotFoundError: No module named 'not_installed_anywhere'"
    ) in failures, shown
    assert "  FAILED tests/test_outcomes.py::test_fails" in failures, shown
    assert "  ERROR tests/test_outcomes.py::test_needs_a_database" in failures, shown
    assert not any("expected_failure" in line or "flaky" in line for line in failures), shown
    assert "warning" not in shown, shown


# -- forged reports -----------------------------------------------------------------------------


def forging_project(root: Path, *, tests_pass: bool, forge: str) -> Path:
    """A project whose one test passes or fails, and whose conftest then runs `forge`
    (Python, with `os` imported and REPORT the path where the server reads the report)."""
    root.mkdir()
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_it.py").write_text(
        f"def test_it() -> None:\n    assert {tests_pass}, 'the real test failed'\n"
    )
    (root / "conftest.py").write_text(
        "import os\n\n"
        f"REPORT = {REPORT!r}\n\n\n"
        "def pytest_unconfigure(config):\n"
        "    # pytest wrote its report at the end of the session: forge one.\n"
        + textwrap.indent(textwrap.dedent(forge), "    ")
    )
    return root


def junit(cases: int, inside: str = "", name: str = "forged") -> str:
    body = "".join(
        f'<testcase classname="tests.test_it" name="{name}_{n}" file="tests/test_it.py" '
        f'time="0.001">{inside}</testcase>'
        for n in range(cases)
    )
    return (
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{body}</testsuite></testsuites>'
    )


FAILURE = '<failure message="forged failure">E   assert False</failure>'
BOMB = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + n)} "{("&" + chr(97 + n) + ";") * 10}">' for n in range(8))
    + ']><testsuites><testsuite><testcase name="&i;"/></testsuite></testsuites>'
)


def writes(text: str) -> str:
    return f"with open(REPORT, 'w') as report:\n    report.write({text!r})\n"


@dataclass(frozen=True)
class Refused:
    name: str
    forge: str
    said: str


REFUSED = [
    Refused(
        "broken-xml", writes("<testsuites><testsuite>"), "it is not well-formed XML (no element"
    ),
    Refused(
        "entity-bomb", writes(BOMB), "it declares XML entities (a possible entity expansion bomb)"
    ),
    Refused(
        "too-big",
        writes(junit(MAX_REPORT_BYTES // 50)),  # about 2 MB
        f"it is larger than the limit of {MAX_REPORT_BYTES:,} bytes (CI_MAX_REPORT_BYTES)",
    ),
]


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_a_report_the_server_refuses_is_said_in_the_log_and_shows_no_counts(
    server: ServerProcess, tmp_path: Path, case: Refused
) -> None:
    project = forging_project(tmp_path / case.name, tests_pass=True, forge=case.forge)

    run = submit(project, server)

    assert run.exit_code == 0, run.stderr
    assert f"[ci] Test report not used: {case.said}" in run.stderr, run.stderr
    assert re.match(rf"^Job {run.job_id} succeeded in [\d.]+s$", run.final_line), run.stderr
    assert server.job(run.job_id)["summary"] is None
    assert server.get(f"/jobs/{run.job_id}/tests").json() == []
    assert server.get("/health").json()["status"] == "ok"


def replacing(make: str) -> str:
    """A forge that removes the report and puts something else in its place, saying why it
    could not."""
    return (
        "try:\n"
        "    os.remove(REPORT)\n"
        f"    {make}\n"
        "except OSError as e:\n"
        "    print('cannot replace the report:', e.strerror, flush=True)\n"
    )


@pytest.mark.parametrize(
    "make", ["os.symlink(HOST_FILE, REPORT)", "os.mkfifo(REPORT)", "os.mkdir(REPORT)"]
)
def test_a_report_cannot_become_a_link_to_a_host_file_a_fifo_or_a_directory(
    server: ServerProcess, tmp_path: Path, make: str
) -> None:
    """The report's place is a regular file mounted from the host, in a read-only folder:
    it stays that file, and the server reads pytest's own report from it."""
    secret = f"HOST-SECRET-{uuid.uuid4().hex}"
    host_file = Path(server.env["CI_DATA_DIR"]) / f"{secret}.xml"
    host_file.write_text(junit(1, f'<failure message="{secret}">{secret}</failure>'))
    forge = f"HOST_FILE = {str(host_file)!r}\n" + replacing(make)
    project = forging_project(tmp_path / "replaced", tests_pass=True, forge=forge)

    run = submit(project, server)

    assert "cannot replace the report: Read-only file system" in run.stdout, run.stdout
    assert re.match(rf"^Job {run.job_id} succeeded: 1 passed in ", run.final_line), run.stderr
    shown = show(server, run.job_id, project)
    assert secret not in shown
    assert secret not in server.get(f"/jobs/{run.job_id}/tests").text
    assert "Test report not used" not in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("tests_pass", "forged", "counts"),
    [
        (True, junit(3, FAILURE), "3 failed (report disagrees with exit code 0)"),
        (False, junit(4), "4 passed (report disagrees with exit code 1)"),
    ],
    ids=["failures-for-exit-0", "passes-for-exit-1"],
)
def test_counts_that_contradict_the_exit_code_are_flagged_wherever_shown(
    server: ServerProcess, tmp_path: Path, tests_pass: bool, forged: str, counts: str
) -> None:
    project = forging_project(tmp_path / "liar", tests_pass=tests_pass, forge=writes(forged))

    run = submit(project, server)

    status = "succeeded" if tests_pass else "failed"
    assert run.exit_code == (0 if tests_pass else 1), run.stderr  # the exit code decides
    assert run.final_line.startswith(f"Job {run.job_id} {status}: {counts} in "), run.stderr
    assert "[ci] Test report disagrees with the exit code: it says " in run.stderr, run.stderr
    assert listed_tests(server, run.job_id, project).strip() == counts
    shown = show(server, run.job_id, project)
    assert shown.splitlines()[0].startswith(f"Job {run.job_id} {status}: {counts} in "), shown
    exit_code = 0 if tests_pass else 1
    assert (
        f"  warning   report disagrees with exit code {exit_code}: the status follows the exit code"
        in shown.splitlines()
    ), shown
    listed = run_ci("list", "--json", cwd=project, server=server, timeout=60)
    (job,) = (job for job in json.loads(listed.stdout) if job["job_id"] == run.job_id)
    assert job["summary"]["warning"] == f"report disagrees with exit code {exit_code}"


def test_a_huge_report_is_capped_counted_and_paged(server: ServerProcess, tmp_path: Path) -> None:
    cases = 5 * MAX_RESULTS
    forge = writes(junit(cases, FAILURE))  # under the size limit: about 0.8 MB
    project = forging_project(tmp_path / "huge", tests_pass=False, forge=forge)

    run = submit(project, server)

    assert (
        f"[ci] Test report capped: it has {cases:,} tests; the results of the first "
        f"{MAX_RESULTS:,} are kept (CI_MAX_TEST_RESULTS), all are counted"
    ) in run.stderr, run.stderr
    assert run.final_line.startswith(f"Job {run.job_id} failed: {cases} failed in "), run.stderr
    first_page = server.get(f"/jobs/{run.job_id}/tests")
    assert len(first_page.json()) == 500  # the default page
    assert server.get(f"/jobs/{run.job_id}/tests", params={"limit": 1001}).status_code == 422
    last = server.get(f"/jobs/{run.job_id}/tests", params={"after": 499, "limit": 1000}).json()
    assert [result["position"] for result in last] == list(range(500, MAX_RESULTS))
    shown = show(server, run.job_id, project)  # it follows the pages
    failed = [line for line in shown.splitlines() if line.startswith("  FAILED ")]
    assert failed == [f"  FAILED tests/test_it.py::forged_{n}" for n in range(MAX_RESULTS)], shown[
        -2000:
    ]
    assert (
        f"  kept      the results of the first {MAX_RESULTS:,} of {cases:,} tests "
        "(the server's limit)" in shown.splitlines()
    ), shown[:2000]
