"""Dependency environments end to end: the real `ci`, a real server, real Docker images.

Each project's requirements.txt carries a comment unique to the test, so its environment is
new; the images the tests made are removed at the end.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import docker
import docker.errors
import pytest

from ci_server.runner.executor import INSTANCE_LABEL
from ci_server.settings import Settings
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, copy_fixture, run_ci, server_env, wait_for
from tests.e2e.test_cli import ASYNC_SUBMITTED, describe, job_id_from_submit

pytestmark = pytest.mark.docker

ENVIRONMENT = re.compile(r"^\[ci\] Environment ([0-9a-f]{12}) (reused|built)\b", re.MULTILINE)
STAMP = re.compile(r"\bSTAMP (\d+)$", re.MULTILINE)  # after the test file's name
STAMP_TEST = """\
from pathlib import Path


def test_prints_the_build_stamp():
    print("STAMP", Path("/opt/ci-build-stamp").read_text().strip())
"""
STAMPING_CONFIG = 'install = ["date +%s%N > /opt/ci-build-stamp"]\n'
"""Every build of the environment writes a different stamp; the tests print theirs."""


@pytest.fixture
def environment_keys(docker_client: docker.DockerClient) -> Iterator[set[str]]:
    """Keys (12 characters) of the environments a test made: their images go at the end."""
    keys: set[str] = set()
    yield keys
    for image in docker_client.images.list(filters={"label": "ci.environment"}):
        if image.labels["ci.environment"][:12] in keys:
            for tag in image.tags or [image.id]:
                docker_client.images.remove(tag, force=True)


def environment_images(client: docker.DockerClient, key: str) -> list[str]:
    images = client.images.list(filters={"label": "ci.environment"})
    return [str(image.id) for image in images if image.labels["ci.environment"].startswith(key)]


def new_project(
    tmp_path: Path, name: str, *, stamped: bool = False, fixture: str = "passing"
) -> Path:
    """A copy of the fixture with a key file made unique: its environment is new."""
    project = copy_fixture(fixture, tmp_path / name)
    key_file = next(
        path
        for path in (project / "requirements.txt", project / "pyproject.toml")
        if path.is_file()
    )
    key_file.write_text(f"{key_file.read_text()}# {name} {uuid.uuid4().hex}\n")
    if stamped:
        (project / "ci.toml").write_text(STAMPING_CONFIG)
        (project / "tests" / "test_stamp.py").write_text(STAMP_TEST)
    return project


def submit(
    project: Path, server: ServerProcess, keys: set[str], *args: str
) -> tuple[str, str, subprocess.CompletedProcess[str]]:
    """`ci submit test` that passes: (environment key, "reused" or "built", the result)."""
    result = run_ci("submit", "test", *args, cwd=project, server=server)
    assert result.returncode == 0, describe(result)
    match = ENVIRONMENT.search(result.stderr)
    assert match, describe(result)
    keys.add(match.group(1))
    return match.group(1), match.group(2), result


def stamp(result: subprocess.CompletedProcess[str]) -> str:
    match = STAMP.search(result.stdout)
    assert match, describe(result)
    return match.group(1)


def test_unchanged_requirements_reuse_the_environment_and_changed_ones_build_a_new_one(
    server: ServerProcess,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    environment_keys: set[str],
) -> None:
    project = new_project(tmp_path, "reuse")
    key, how, first = submit(project, server, environment_keys)
    assert how == "built", describe(first)
    assert re.search(rf"Environment {key} built in [\d.]+s", first.stderr), describe(first)

    for _ in range(2):
        again, how, result = submit(project, server, environment_keys)
        assert (again, how) == (key, "reused"), describe(result)
    assert len(environment_images(docker_client, key)) == 1

    with (project / "requirements.txt").open("a") as requirements:
        requirements.write("iniconfig\n")  # preinstalled in the runner image: no download
    changed, how, result = submit(project, server, environment_keys)
    assert changed != key and how == "built", describe(result)
    assert len(environment_images(docker_client, changed)) == 1


def test_no_cache_rebuilds_and_later_jobs_run_in_the_new_build(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    project = new_project(tmp_path, "rebuild", stamped=True)
    _, how, first = submit(project, server, environment_keys, "--", "-s")
    assert how == "built"
    _, how, reused = submit(project, server, environment_keys, "--", "-s")
    assert how == "reused" and stamp(reused) == stamp(first)

    # The job before left a container started ahead on the old build: it must not be used.
    _, how, rebuilt = submit(project, server, environment_keys, "--no-cache", "--", "-s")
    assert how == "built" and stamp(rebuilt) != stamp(first), describe(rebuilt)
    _, how, after = submit(project, server, environment_keys, "--", "-s")
    assert how == "reused" and stamp(after) == stamp(rebuilt), describe(after)


def test_two_jobs_needing_the_same_new_environment_build_it_once(
    make_server: ServerFactory,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    environment_keys: set[str],
) -> None:
    server = make_server(CI_MAX_CONCURRENT_JOBS="2")
    project = new_project(tmp_path, "together", stamped=True)
    job_ids = []
    for _ in range(2):
        submitted = run_ci("submit", "test", "--async", "--", "-s", cwd=project, server=server)
        match = ASYNC_SUBMITTED.match(submitted.stdout.strip())
        assert match, describe(submitted)
        job_ids.append(match.group(1))

    logs: list[subprocess.CompletedProcess[str]] = []
    for job_id in job_ids:
        assert server.wait_for_status(job_id, "succeeded", "failed", "error")["status"] == (
            "succeeded"
        )
        logs.append(run_ci("logs", job_id, cwd=tmp_path, server=server))
    found = [ENVIRONMENT.search(log.stdout + log.stderr) for log in logs]
    assert all(found), [describe(log) for log in logs]
    keys = {match.group(1) for match in found if match}
    environment_keys.update(keys)
    assert sorted(match.group(2) for match in found if match) == ["built", "reused"]
    [key] = keys
    assert len(environment_images(docker_client, key)) == 1
    assert stamp(logs[0]) == stamp(logs[1])  # one build, both jobs in it


def test_a_failed_build_is_not_kept(
    server: ServerProcess, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    def environments() -> set[str]:
        """The server's own environment images (other servers may build theirs meanwhile)."""
        owner = f"ci.owner={Settings(db_path=server.db_path).instance_id}"
        images = docker_client.images.list(filters={"label": ["ci.environment", owner]})
        return {str(image.id) for image in images}

    before = environments()
    project = new_project(tmp_path, "broken")
    (project / "ci.toml").write_text('install = ["echo cannot install; exit 3"]\n')
    for _ in range(2):  # the second job tries again: nothing of the first was kept
        result = run_ci("submit", "test", cwd=project, server=server)
        assert result.returncode == 1, describe(result)
        assert "installing dependencies failed" in result.stderr, describe(result)
        assert "cannot install" in result.stdout, describe(result)
        assert ENVIRONMENT.search(result.stderr) is None, describe(result)
    assert environments() == before


def test_the_next_run_takes_the_container_started_ahead_for_it(
    server: ServerProcess,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    environment_keys: set[str],
) -> None:
    project = new_project(tmp_path, "warm")
    submit(project, server, environment_keys)
    instance = Settings(db_path=server.db_path).instance_id

    def waiting() -> list[str]:
        containers = docker_client.containers.list(
            filters={"label": f"{INSTANCE_LABEL}={instance}", "name": "ci-warm-"}
        )
        return [str(container.id) for container in containers]

    [ahead] = wait_for(waiting, what="a container started ahead for the next run")
    since = time.time() - 1
    _, how, result = submit(project, server, environment_keys)
    assert how == "reused", describe(result)
    job_id = job_id_from_submit(result.stderr)
    # The engine's own record: the waiting container became the job's, renamed ci-<job id>.
    renames = docker_client.events(
        since=since,
        until=time.time(),
        filters={"type": "container", "event": "rename", "container": ahead},
        decode=True,
    )
    assert [event["Actor"]["Attributes"]["name"] for event in renames] == [f"ci-{job_id}"]


INSTALLED = "==> The project is installed in the environment (editable)"
INSTALLING = "==> Installing the project\n"


def test_a_packaged_project_is_installed_with_its_environment_and_runs_its_new_code(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    """Its jobs install nothing, yet each runs the code it was sent: a change, a new module;
    and a module its build wrote (not in its source) is there."""
    project = new_project(tmp_path, "packaged", fixture="packaged")
    key, _, first = submit(project, server, environment_keys)
    assert INSTALLED in first.stdout and INSTALLING not in first.stdout, describe(first)
    assert "2 passed" in first.stdout, describe(first)

    code = project / "src" / "calcpkg" / "__init__.py"
    code.write_text(code.read_text().replace("a + b", "a - b"))
    broken = run_ci("submit", "test", cwd=project, server=server)
    assert broken.returncode == 1, describe(broken)
    assert "FAILED tests/test_calcpkg.py::test_add" in broken.stdout, describe(broken)
    assert f"Environment {key} reused" in broken.stderr, describe(broken)

    code.write_text(code.read_text().replace("a - b", "a + b"))
    (project / "src" / "calcpkg" / "mul.py").write_text("def mul(a, b):\n    return a * b\n")
    (project / "tests" / "test_mul.py").write_text(
        "from calcpkg.mul import mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n"
    )
    again, how, fixed = submit(project, server, environment_keys)
    assert (again, how) == (key, "reused"), describe(fixed)
    assert INSTALLED in fixed.stdout and "3 passed" in fixed.stdout, describe(fixed)


def test_a_pyproject_with_only_tool_settings_is_not_installed(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    """requirements.txt, a pyproject.toml holding pytest's settings, two top-level packages:
    run as the developer runs it (`pip install -r requirements.txt && pytest`); installing
    it with pip would fail on the two packages."""
    project = new_project(tmp_path, "settings")
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["tests"]\n')
    (project / "pytest.ini").unlink()  # the settings live in pyproject.toml here
    for package in ("app", "lib"):
        (project / package).mkdir()
        (project / package / "__init__.py").write_text("VALUE = 1\n")
    (project / "tests" / "test_packages.py").write_text(
        "import app\nimport lib\n\n\ndef test_both():\n    assert app.VALUE + lib.VALUE == 2\n"
    )
    _, _, result = submit(project, server, environment_keys)
    assert "[ci] Project: requirements.txt\n" in result.stderr, describe(result)
    assert "Installing the project" not in result.stdout, describe(result)
    assert re.search(r"^tests/test_packages.py \. ", result.stdout, re.M), describe(result)


def test_a_pyproject_without_build_system_is_run_as_an_application(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    """uv's application shape: [project] with dependencies, a dev group, no [build-system],
    two top-level packages. Its dependencies are installed, the project is not (pip could not
    build it), and its tests run."""
    project = tmp_path / "application"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "application"\nversion = "0.1.0"\ndependencies = ["iniconfig"]\n'
        f'\n[dependency-groups]\ndev = ["pytest"]\n\n# {uuid.uuid4().hex}\n'
    )
    for package in ("app", "lib"):
        (project / package).mkdir()
        (project / package / "__init__.py").write_text("VALUE = 1\n")
    (project / "tests" / "test_packages.py").write_text(
        "import app\nimport iniconfig\nimport lib\n\n\n"
        "def test_both():\n    assert app.VALUE + lib.VALUE == 2\n"
    )
    _, _, result = submit(project, server, environment_keys)
    assert "the project itself is not installed" in result.stderr, describe(result)
    assert re.search(r"^tests/test_packages.py \. ", result.stdout, re.M), describe(result)


def test_changing_an_included_requirements_file_builds_a_new_environment(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    project = new_project(tmp_path, "included")
    (project / "requirements").mkdir()
    base = project / "requirements" / "base.txt"
    base.write_text(f"pytest\n# {uuid.uuid4().hex}\n")
    (project / "requirements.txt").write_text("-r requirements/base.txt\n")
    key, how, result = submit(project, server, environment_keys)
    assert how == "built", describe(result)
    assert submit(project, server, environment_keys)[:2] == (key, "reused")

    base.write_text(f"{base.read_text()}iniconfig\n")  # preinstalled: no download
    changed, how, result = submit(project, server, environment_keys)
    assert changed != key and how == "built", describe(result)


def test_a_local_package_the_requirements_install_is_rebuilt_when_its_code_changes(
    server: ServerProcess, tmp_path: Path, environment_keys: set[str]
) -> None:
    """requirements.txt installs ./libs/greeting as it is (not editable): the environment
    holds a copy, so a change to its code must build a new one, never run the old copy."""
    project = new_project(tmp_path, "monorepo")
    library = project / "libs" / "greeting"
    (library / "greeting").mkdir(parents=True)
    (library / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        f'\n[project]\nname = "greeting"\nversion = "1.0"\n# {uuid.uuid4().hex}\n'
    )
    code = library / "greeting" / "__init__.py"
    code.write_text('WORD = "hello"\n')
    with (project / "requirements.txt").open("a") as requirements:
        requirements.write("./libs/greeting\n")
    (project / "tests" / "test_greeting.py").write_text(
        "import greeting\n\n\ndef test_word():\n    print('WORD', greeting.WORD)\n"
    )
    key, how, first = submit(project, server, environment_keys, "--", "-s")
    assert how == "built" and "WORD hello" in first.stdout, describe(first)

    code.write_text('WORD = "goodbye"\n')
    changed, how, second = submit(project, server, environment_keys, "--", "-s")
    assert changed != key and how == "built", describe(second)
    assert "WORD goodbye" in second.stdout, describe(second)


RUNNING_IN = re.compile(r"^\[ci\] Running in (\S+)$", re.MULTILINE)


@pytest.fixture
def two_servers(tmp_path: Path, runner_image: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two servers (instances) on the same engine, each keeping one environment, no warm
    containers (a job's image is then looked up for it, not held by a waiting container)."""
    settings = {"CI_ENV_CACHE_SIZE": "1", "CI_WARM_CONTAINERS": "0"}
    servers = []
    try:
        for name in ("first", "second"):
            env = server_env(tmp_path / name, runner_image, settings)
            servers.append(ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start())
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def image_of(result: subprocess.CompletedProcess[str]) -> str:
    match = RUNNING_IN.search(result.stderr)
    assert match, describe(result)
    return match.group(1)


def test_a_servers_eviction_leaves_another_servers_environments_alone(
    two_servers: tuple[ServerProcess, ServerProcess],
    tmp_path: Path,
    docker_client: docker.DockerClient,
    environment_keys: set[str],
) -> None:
    first, second = two_servers
    kept = new_project(tmp_path, "first-servers")
    _, how, result = submit(kept, first, environment_keys)
    assert how == "built"
    kept_image = image_of(result)
    labels = docker_client.images.get(kept_image).labels
    assert labels["ci.owner"] == Settings(db_path=first.db_path).instance_id

    # The second server builds two environments and keeps one: it evicts its own.
    _, _, result = submit(new_project(tmp_path, "evicted"), second, environment_keys)
    evicted_image = image_of(result)
    submit(new_project(tmp_path, "second-servers"), second, environment_keys)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(evicted_image)
    docker_client.images.get(kept_image)  # the first server's is still there
    _, how, result = submit(kept, first, environment_keys)
    assert how == "reused", describe(result)


def test_an_environment_removed_behind_the_servers_back_is_built_again(
    two_servers: tuple[ServerProcess, ServerProcess],
    tmp_path: Path,
    docker_client: docker.DockerClient,
    environment_keys: set[str],
) -> None:
    server, _ = two_servers
    project = new_project(tmp_path, "removed")
    key, _, result = submit(project, server, environment_keys)
    image = image_of(result)
    docker_client.images.remove(image, force=True)

    again, _, result = submit(project, server, environment_keys)
    said = [line for line in result.stderr.splitlines() if "Environment" in line or "gone" in line]
    assert again == key
    assert said == [
        f"[ci] Environment {key} reused: dependencies already installed",
        f"[ci] Image {image} is gone from the engine: building it again",
        mock.ANY,
    ], describe(result)
    assert said[2].startswith(f"[ci] Environment {key} built in"), describe(result)
