"""Hostile input end to end: a real `ci-server` process, real HTTP, an admin's real key.

Every hostile upload is refused with a 400 or 413 that says why, creates no job, writes
nothing anywhere under the server's folder (the data dir and what a `..` entry would reach),
starts no container, and leaves the server answering and running jobs.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
import requests

from ci_server.settings import Settings
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, run_ci, server_env
from tests.e2e.test_cli import describe, job_id_from_submit, last_line

MAX_FILES = 10
MAX_UNPACKED = 1_000_000
MAX_UPLOAD = 200_000
LIMITS = {
    "CI_MAX_FILES": str(MAX_FILES),
    "CI_MAX_UNPACKED_BYTES": str(MAX_UNPACKED),
    "CI_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
}
PROJECT = {"requirements.txt": "pytest\n", "test_ok.py": "def test_ok():\n    pass\n"}
ABSOLUTE_TARGET = Path(f"/tmp/ci-hostile-{uuid.uuid4().hex}.py")
ESCAPE = "../../../../evil.py"
"""From <data>/workspaces/<job>-<random>/src, where a job unpacks: the data dir's parent."""


def zipped(files: dict[str, bytes | str] | None = None, *infos: zipfile.ZipInfo) -> bytes:
    """A deflated zip of the project (or `files`) plus raw entries, each holding b"x = 1"."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in (PROJECT if files is None else files).items():
            archive.writestr(name, content)
        for info in infos:
            archive.writestr(info, "x = 1\n")
    return buffer.getvalue()


def symlink(name: str, target: str) -> bytes:
    link = zipfile.ZipInfo(name)
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("requirements.txt", "pytest\n")
        archive.writestr(link, target)
    return buffer.getvalue()


def zeros(size: int) -> bytes:
    return zipped({**PROJECT, "zeros.bin": bytes(size)})


def needing_zip_version_9_9() -> bytes:
    data = bytearray(zipped())
    central = data.rindex(b"test_ok.py") - 46  # its entry in the central directory
    assert data[central : central + 4] == b"PK\x01\x02"
    data[central + 6 : central + 8] = (99).to_bytes(2, "little")  # "version needed: 9.9"
    return bytes(data)


def multipart(archive: bytes, boundary: str) -> Iterator[bytes]:
    """A form with the archive, in 16 KiB pieces: sent chunked, with no Content-Length."""
    yield (
        f"--{boundary}\r\nContent-Disposition: form-data; name=archive; "
        f'filename="p.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    for start in range(0, len(archive), 16 * 1024):
        yield archive[start : start + 16 * 1024]
    yield f"\r\n--{boundary}--\r\n".encode()


@dataclass(frozen=True)
class Hostile:
    name: str
    archive: Callable[[], bytes]
    status: int
    detail: str
    chunked: bool = False


CASES = [
    Hostile("not-a-zip", lambda: b"this is a tarball, honest\n" * 40, 400, "not a valid zip"),
    Hostile("truncated", lambda: zipped()[:-30], 400, "not a valid zip archive"),
    Hostile(
        "needs-zip-version-9.9",
        needing_zip_version_9_9,
        400,
        "not a valid zip archive: zip file version 9.9",
    ),
    Hostile(
        "dot-dot-entry",
        lambda: zipped(None, zipfile.ZipInfo(ESCAPE)),
        400,
        f"archive entry {ESCAPE!r} points outside the project",
    ),
    Hostile(
        "absolute-entry",
        lambda: zipped(None, zipfile.ZipInfo(str(ABSOLUTE_TARGET))),
        400,
        f"archive entry {str(ABSOLUTE_TARGET)!r} has an absolute path",
    ),
    Hostile(
        "symlink-entry",
        lambda: symlink("passwd", "/etc/passwd"),
        400,
        "archive entry 'passwd' is a symbolic link",
    ),
    Hostile(
        "too-many-files",
        lambda: zipped({f"f{n}.py": "" for n in range(MAX_FILES + 1)}),
        400,
        f"archive has {MAX_FILES + 1} entries, more than the limit of {MAX_FILES}",
    ),
    Hostile(
        "zip-bomb-by-size",
        lambda: zeros(20 * MAX_UNPACKED),  # 20 MB of zeros: about 20 KB zipped
        400,
        f"more than the limit of {MAX_UNPACKED}",
    ),
    Hostile(
        "zip-bomb-by-ratio",
        lambda: zeros(MAX_UNPACKED // 2),  # under the size limit, compressed 1000 to 1
        400,
        "refusing a possible zip bomb",
    ),
    Hostile(
        "over-the-upload-limit",
        lambda: os.urandom(MAX_UPLOAD + 50_000),
        413,
        f"upload too large: the limit is {MAX_UPLOAD} bytes",
    ),
    Hostile(
        "over-the-upload-limit-chunked",
        lambda: os.urandom(MAX_UPLOAD + 50_000),
        413,
        f"upload too large: the limit is {MAX_UPLOAD} bytes",
        chunked=True,
    ),
]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    """One server for every case (each case checks it is left as it was found)."""
    env = server_env(tmp_path_factory.mktemp("hostile"), runner_image, LIMITS)
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


def upload(server: ServerProcess, archive: bytes, *, chunked: bool = False) -> requests.Response:
    url = f"{server.url}/jobs"
    if not chunked:
        files = {"archive": ("project.zip", archive, "application/zip")}
        return requests.post(url, files=files, headers=server.headers, timeout=60)
    boundary = uuid.uuid4().hex
    headers = server.headers | {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = requests.post(url, data=multipart(archive, boundary), headers=headers, timeout=60)
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.request.headers
    return response


def files_under(root: Path) -> set[str]:
    """Everything under the server's folder but its database and logs, which change."""
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if not path.name.startswith("ci.db")
    }


def containers_created(
    docker_client: docker.DockerClient, server: ServerProcess, since: float
) -> list[str]:
    """Ids of the containers this server created since then (removed ones too)."""
    instance = Settings(db_path=server.db_path).instance_id
    events = docker_client.events(
        since=since,
        until=time.time(),
        filters={"type": "container", "event": "create", "label": f"ci.instance={instance}"},
        decode=True,
    )
    return [event["id"] for event in events]


@pytest.mark.docker
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_hostile_upload_is_refused_and_leaves_no_trace(
    server: ServerProcess, docker_client: docker.DockerClient, case: Hostile
) -> None:
    root = server.db_path.parent
    data_dir = Path(server.env["CI_DATA_DIR"])
    assert data_dir.parent == root
    jobs_before = server.get("/jobs").json()
    files_before = files_under(root)
    since = time.time()

    response = upload(server, case.archive(), chunked=case.chunked)

    assert response.status_code == case.status, response.text
    assert case.detail in response.json()["detail"], response.text
    assert server.get("/jobs").json() == jobs_before  # no job
    assert files_under(root) == files_before  # not even a leftover upload in the data dir
    assert not (root / "evil.py").exists()  # where the `..` entry points
    assert not ABSOLUTE_TARGET.exists()
    assert containers_created(docker_client, server, since) == []
    assert server.get("/health").json()["status"] == "ok"


@pytest.mark.docker
def test_after_every_hostile_upload_the_server_still_runs_a_job(
    server: ServerProcess, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    for case in CASES:  # all of them again, one after the other
        response = upload(server, case.archive(), chunked=case.chunked)
        assert response.status_code == case.status, (case.name, response.text)
    project = tmp_path / "project"
    project.mkdir()
    for name, content in PROJECT.items():
        (project / name).write_text(content)
    since = time.time()

    result = run_ci("submit", "test", cwd=project, server=server)

    assert result.returncode == 0, describe(result)
    assert "1 passed" in result.stdout, describe(result)
    # The container check of the hostile cases sees containers when there are some.
    assert len(containers_created(docker_client, server, since)) >= 1


@pytest.mark.docker
@pytest.mark.parametrize("size", [100_000, 1_000_000])
def test_an_oversized_header_is_never_a_server_error(server: ServerProcess, size: int) -> None:
    """uvicorn refuses a header block it cannot take in one read (400, or it drops the
    connection); a smaller one reaches the app, which answers as usual."""
    for headers in (
        server.headers | {"X-Padding": "x" * size},
        {"Authorization": f"Bearer ci_{'x' * size}"},
    ):
        try:
            response = requests.get(f"{server.url}/jobs", headers=headers, timeout=60)
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
            continue  # uvicorn reset the connection on it: refused, and nothing crashed
        assert response.status_code < 500, response.text
        if size >= 1_000_000:
            assert response.status_code in (400, 431), response.text
    assert server.get("/health").json()["status"] == "ok"
    assert server.get("/jobs").status_code == 200


@pytest.mark.docker
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/jobs/..%2F..%2Fetc%2Fpasswd", 404),  # no such route
        ("GET", "/jobs/%00", 422),
        ("GET", "/jobs/0123456789ab%00", 422),
        ("GET", f"/jobs/{'a' * 10_000}", 422),
        ("GET", "/jobs/%C3%A9t%C3%A9/events", 422),
        ("POST", "/jobs/0123456789AB/cancel", 422),
        ("GET", "/jobs?limit=5&verbose=yes&format=xml", 200),  # unknown parameters: ignored
    ],
)
def test_malformed_job_ids_and_unknown_parameters_through_a_real_server(
    server: ServerProcess, method: str, path: str, status: int
) -> None:
    url = f"{server.url}{path}"
    response = requests.request(method, url, headers=server.headers, timeout=60)
    assert response.status_code == status, response.text


WRONG_SHAPES = [
    ("project-is-an-integer", "project = 3\n",
     "pyproject.toml: [project] must be a table, not an integer"),
    ("build-requires-hold-an-integer", "[build-system]\nrequires = [1]\n",
     "pyproject.toml: [build-system] requires must be an array of strings, "
     "not an array holding an integer"),
    ("arrays-nested-too-deep", "x = " + "[" * 2_000 + "]" * 2_000 + "\n",
     "pyproject.toml is not valid TOML: its arrays or tables nest too deep"),
]  # fmt: skip


@pytest.mark.docker
@pytest.mark.parametrize(
    ("pyproject", "reason"),
    [(pyproject, reason) for _, pyproject, reason in WRONG_SHAPES],
    ids=[name for name, _, _ in WRONG_SHAPES],
)
def test_a_project_file_of_the_wrong_shape_fails_the_job_saying_which_and_why(
    server: ServerProcess,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    pyproject: str,
    reason: str,
) -> None:
    """Not `error` with `internal error: AttributeError(...)`: the project's mistake, said,
    before any container is started for it."""
    project = tmp_path / "project"
    project.mkdir()
    for name, content in {**PROJECT, "pyproject.toml": pyproject}.items():
        (project / name).write_text(content)
    since = time.time()

    result = run_ci("submit", "test", cwd=project, server=server)

    job_id = job_id_from_submit(result.stderr)
    assert result.returncode == 1, describe(result)
    outcome = last_line(result.stderr)  # `Job <id> failed in 0.1s (<reason>)`
    assert outcome.startswith(f"Job {job_id} failed"), describe(result)
    assert outcome.endswith(f"({reason})"), describe(result)
    job = server.job(job_id)
    assert (job["status"], job["reason"]) == ("failed", reason)
    events = docker_client.events(
        since=since,
        until=time.time(),
        filters={"type": "container", "container": f"ci-{job_id}"},
        decode=True,
    )
    assert list(events) == []


@pytest.mark.docker
def test_below_the_free_disk_floor_an_upload_gets_507_and_leaves_no_trace(
    make_server: ServerFactory, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """CI_MIN_FREE_DISK_MB above the real free space: the disk is "low" for this server."""
    floor = shutil.disk_usage(tmp_path).free // 1024**2 + 1_000_000
    server = make_server(CI_MIN_FREE_DISK_MB=str(floor))
    files_before = files_under(server.db_path.parent)
    since = time.time()

    response = upload(server, zipped())

    assert response.status_code == 507, response.text
    detail = response.json()["detail"]
    assert "the server is low on disk space" in detail
    assert f"it keeps {floor} MiB free: CI_MIN_FREE_DISK_MB" in detail
    assert server.get("/jobs").json() == []
    assert files_under(server.db_path.parent) == files_before  # no upload kept, nor its blob
    assert containers_created(docker_client, server, since) == []
    project = tmp_path / "project"
    project.mkdir()
    for name, content in PROJECT.items():
        (project / name).write_text(content)
    result = run_ci("submit", "test", cwd=project, server=server)
    assert result.returncode != 0
    assert "the server is low on disk space" in result.stderr, describe(result)
