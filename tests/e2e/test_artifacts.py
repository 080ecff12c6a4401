"""End to end: a job's artifacts, with a real server, the real `ci` and Docker.

Tests write files in their project copy; ci.toml's `artifacts` names those the job keeps,
with its JUnit report. `ci artifacts` brings them back byte for byte; `ci show` lists them.
Files the tests write are hostile: a link to a host file, more files than allowed, a file
past the byte limit: each is left out with a line in the job's log, what fits is kept.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.harness import ServerProcess, run_ci, server_env
from tests.e2e.test_cli import describe, job_id_from_submit
from tests.integration.test_sqlite_api import UNKNOWN_ID

pytestmark = pytest.mark.docker

MAX_FILES = 5
MAX_BYTES = 200_000
BINARY = bytes(range(256)) * 64 + b"\x00\xff\r\n\x1a"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    limits = {"CI_MAX_ARTIFACT_FILES": str(MAX_FILES), "CI_MAX_ARTIFACT_BYTES": str(MAX_BYTES)}
    env = server_env(tmp_path_factory.mktemp("artifacts"), runner_image, limits)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


PATTERNS = '["htmlcov/**", "reports/*.xml", "out/**"]'
"""The same in every project here: ci.toml is a key file, so they share one environment."""


def make_project(root: Path, test_body: str) -> Path:
    """A project whose one test runs `test_body` in the project's copy."""
    root.mkdir()
    (root / "ci.toml").write_text(f"artifacts = {PATTERNS}\n")
    (root / "requirements.txt").write_text("pytest\n")
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    (root / "tests").mkdir()
    body = textwrap.indent(textwrap.dedent(test_body), "    ")
    (root / "tests" / "test_writes.py").write_text(
        f"from pathlib import Path\nimport os\n\n\ndef test_writes():\n{body}\n"
    )
    return root


def submit(project: Path, server: ServerProcess) -> tuple[str, str]:
    """The job's id and what `ci` printed on stderr (the `[ci]` lines among them)."""
    result = run_ci("submit", "test", cwd=project, server=server, timeout=600)
    assert result.returncode == 0, describe(result)
    return job_id_from_submit(result.stderr), result.stdout + result.stderr


def test_artifacts_download_byte_for_byte_and_show_lists_them(
    server: ServerProcess, tmp_path: Path
) -> None:
    project = make_project(
        tmp_path / "writer",
        f"""
        Path("htmlcov/deep").mkdir(parents=True)
        Path("htmlcov/index.html").write_text("<h1>coverage</h1>")
        Path("htmlcov/deep/data.bin").write_bytes({BINARY!r})
        Path("reports").mkdir()
        Path("reports/unit.xml").write_text("<unit/>")
        Path("reports/skipped.txt").write_text("not matched")
        """,
    )
    job_id, printed = submit(project, server)
    assert "Artifacts: 4 file(s) kept" in printed, printed

    out = tmp_path / "downloaded"
    fetched = run_ci("artifacts", job_id, "-o", str(out), cwd=tmp_path, server=server)
    shown = run_ci("show", job_id, cwd=tmp_path, server=server)

    assert fetched.returncode == 0, describe(fetched)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["htmlcov/deep/data.bin", "htmlcov/index.html", "junit.xml", "reports/unit.xml"]
    assert (out / "htmlcov/deep/data.bin").read_bytes() == BINARY
    assert (out / "htmlcov/index.html").read_text() == "<h1>coverage</h1>"
    assert "test_writes" in (out / "junit.xml").read_text()
    assert shown.returncode == 0, describe(shown)
    assert "Artifacts (4, " in shown.stdout and f"ci artifacts {job_id}" in shown.stdout

    # Another (non-admin) user: the job is unknown to them, word for word, and nothing written.
    bob = {"CI_API_KEY": server.add_user("bob")}
    theirs = run_ci(
        "artifacts", job_id, "-o", str(tmp_path / "bob"), cwd=tmp_path, server=server, env=bob
    )
    unknown = run_ci(
        "artifacts", UNKNOWN_ID, "-o", str(tmp_path / "bob"), cwd=tmp_path, server=server, env=bob
    )
    assert theirs.returncode == unknown.returncode != 0, describe(theirs)
    assert theirs.stderr == unknown.stderr.replace(UNKNOWN_ID, job_id)
    assert f"no job with id '{job_id}'" in theirs.stderr
    assert not (tmp_path / "bob").exists()


def test_hostile_artifacts_are_bounded_and_said(server: ServerProcess, tmp_path: Path) -> None:
    project = make_project(
        tmp_path / "hostile",
        f"""
        Path("out").mkdir()
        os.symlink("/etc/passwd", "out/a-passwd")
        Path("out/b-huge.bin").write_bytes(b"x" * {MAX_BYTES + 1})
        for n in range(20):
            Path(f"out/c{{n:02d}}.txt").write_text(str(n))
        """,
    )
    job_id, printed = submit(project, server)

    assert "out/a-passwd not kept: not a regular file" in printed, printed
    assert f"out/b-huge.bin not kept: past the {MAX_BYTES:,} bytes allowed" in printed, printed
    assert f"more file(s) not kept: past the {MAX_FILES} allowed" in printed, printed

    out = tmp_path / "downloaded"
    fetched = run_ci("artifacts", job_id, "-o", str(out), cwd=tmp_path, server=server)
    assert fetched.returncode == 0, describe(fetched)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    # The report first, then as many as the count allows; no link, nothing of the host.
    assert files == ["junit.xml", "out", "out/c00.txt", "out/c01.txt", "out/c02.txt", "out/c03.txt"]
    assert all("root:" not in p.read_text() for p in out.rglob("*") if p.is_file())
