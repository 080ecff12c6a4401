"""How a project itself is installed, end to end: the real `ci`, a real server, real Docker.

Build backends that need more than themselves for an editable install (hatchling,
pdm-backend), projects whose build compiles C, projects that cannot be installed editable,
and Debian packages a project asks for in its ci.toml. Each project is made unique (a
comment in its pyproject.toml), so its environment is new; the images the tests made are
removed at the end.
"""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, copy_fixture, run_ci
from tests.e2e.test_cli import describe, progress_line

pytestmark = pytest.mark.docker

KEPT_IMAGE = re.compile(
    r"^\[ci\] (System packages|Environment|Project) ([0-9a-f]{12}) "
    r"(reused|built|installed)\b",
    re.MULTILINE,
)
"""The job's lines about the kept images it ran in: what, its key, and how it came."""
EDITABLE = "==> The project is installed in the environment (editable)"
BUILT_FROM_SOURCE = "==> The project is installed in the environment (built from this source)"
INSTALLING_ON_THIS_RUN = "==> Installing the project\n"
FLAVOUR = re.compile(r"\bFLAVOUR (\w+)$", re.MULTILINE)


@pytest.fixture
def made_images(docker_client: docker.DockerClient) -> Iterator[set[str]]:
    """Keys (12 characters) of the kept images a test made: removed at the end, once the
    server (and the containers it started ahead on them) has stopped: see `server`."""
    keys: set[str] = set()
    yield keys
    images = docker_client.images.list(filters={"label": "ci.environment"})
    for image in sorted(images, key=lambda image: image.attrs["Created"], reverse=True):
        if image.labels["ci.environment"][:12] in keys:  # built on another: removed first
            for tag in image.tags or [image.id]:
                docker_client.images.remove(tag, force=True)


@pytest.fixture
def server(made_images: set[str], make_server: ServerFactory) -> ServerProcess:
    """A server that stops before `made_images` removes the images: an image a container
    still uses would only lose its tag, and stay."""
    return make_server()


def unique_project(tmp_path: Path, fixture: str) -> Path:
    """A copy of the fixture whose environment is new."""
    project = copy_fixture(fixture, tmp_path / fixture)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(f"{pyproject.read_text()}# {uuid.uuid4().hex}\n")
    return project


def submit(
    project: Path, server: ServerProcess, made: set[str], *pytest_args: str
) -> tuple[dict[str, tuple[str, str]], subprocess.CompletedProcess[str]]:
    """`ci submit test` that passes; {"Environment": (key, "built"), ...} from its log."""
    extra = ("--", *pytest_args) if pytest_args else ()
    result = run_ci("submit", "test", *extra, cwd=project, server=server, timeout=900)
    images = {what: (key, how) for what, key, how in KEPT_IMAGE.findall(result.stderr)}
    made.update(key for key, _ in images.values())
    assert result.returncode == 0, describe(result)
    return images, result


@pytest.mark.parametrize("fixture", ["hatch_src", "pdm_flat"])
def test_a_backend_needing_more_for_editable_installs_gets_an_editable_environment(
    fixture: str, server: ServerProcess, tmp_path: Path, made_images: set[str]
) -> None:
    """hatchling (src layout) and pdm-backend (flat) need `editables`, which they name only
    when asked: the environment has it, so the project is installed there once, editable,
    and the next run installs nothing yet runs the code it was sent."""
    project = unique_project(tmp_path, fixture)
    images, first = submit(project, server, made_images)
    assert images["Environment"][1] == "built", describe(first)
    assert "cannot be installed in editable mode" not in first.stdout, describe(first)
    assert "Traceback" not in first.stdout, describe(first)
    assert EDITABLE in first.stdout and INSTALLING_ON_THIS_RUN not in first.stdout, describe(first)

    package = "hatchcalc" if fixture == "hatch_src" else "pdmcalc"
    code = next(project.rglob(f"{package}/__init__.py"))
    code.write_text(code.read_text().replace("a + b", "a - b"))
    again = run_ci("submit", "test", cwd=project, server=server, timeout=900)
    assert again.returncode == 1, describe(again)
    assert f"Environment {images['Environment'][0]} reused" in again.stderr, describe(again)
    assert EDITABLE in again.stdout and INSTALLING_ON_THIS_RUN not in again.stdout, describe(again)
    assert re.search(r"^FAILED tests/test_\w+\.py::test_add\b", again.stdout, re.M), describe(again)


@pytest.mark.parametrize(
    ("fixture", "source", "why"),
    [
        ("c_extension", "src/fastcalc/_fast.c", "It has compiled extensions"),
        ("no_editable", "src/plaincalc/__init__.py", "It cannot be installed in editable mode"),
    ],
    ids=["compiled", "no-editable-hook"],
)
def test_a_project_its_environment_cannot_keep_is_built_once_per_source(
    fixture: str,
    source: str,
    why: str,
    server: ServerProcess,
    tmp_path: Path,
    made_images: set[str],
) -> None:
    """Built on its environment, keyed by all of its files: an unchanged source reuses the
    build (nothing compiled or installed), a changed one is built anew and its tests see
    the change."""
    project = unique_project(tmp_path, fixture)
    images, first = submit(project, server, made_images, "-s")
    assert images["Environment"][1] == "built", describe(first)
    assert f"==> {why}: it is built from each new source" in first.stdout, describe(first)
    assert images["Project"][1] == "built", describe(first)
    assert BUILT_FROM_SOURCE in first.stdout, describe(first)
    assert FLAVOUR.findall(first.stdout) == ["vanilla"], describe(first)

    images_again, again = submit(project, server, made_images, "-s")
    assert images_again == {
        "Environment": (images["Environment"][0], "reused"),
        "Project": (images["Project"][0], "reused"),
    }, describe(again)
    assert "==> Building the project" not in again.stdout, describe(again)
    assert INSTALLING_ON_THIS_RUN not in again.stdout, describe(again)
    assert BUILT_FROM_SOURCE in again.stdout, describe(again)

    code = project / source
    code.write_text(code.read_text().replace('"vanilla"', '"chocolate"'))
    images_changed, changed = submit(project, server, made_images, "-s")
    assert images_changed["Environment"] == (images["Environment"][0], "reused"), describe(changed)
    assert images_changed["Project"][1] == "built", describe(changed)
    assert images_changed["Project"][0] != images["Project"][0], describe(changed)
    assert FLAVOUR.findall(changed.stdout) == ["chocolate"], describe(changed)


def test_system_packages_are_installed_for_the_build_while_the_tests_stay_unprivileged(
    server: ServerProcess, tmp_path: Path, made_images: set[str]
) -> None:
    """ci.toml asks for libyaml-dev: apt installs it in an image of its own (with the
    capabilities apt needs), the C extension builds against its header and links its
    library, and the tests run as the job's user with no capability at all."""
    project = unique_project(tmp_path, "system_packages")
    images, first = submit(project, server, made_images, "-s")
    assert images["System packages"][1] in ("installed", "reused"), describe(first)
    assert "LIBYAML 0." in first.stdout, describe(first)
    assert "CAPS 0000000000000000" in first.stdout, describe(first)

    images_again, again = submit(project, server, made_images)
    assert images_again["System packages"] == (images["System packages"][0], "reused"), describe(
        again
    )
    assert images_again["Environment"] == (images["Environment"][0], "reused"), describe(again)
    assert progress_line("tests/test_yamlver.py", "..").search(again.stdout), describe(again)


def test_a_system_package_that_is_no_debian_name_fails_the_job_before_any_build(
    server: ServerProcess, tmp_path: Path
) -> None:
    project = unique_project(tmp_path, "system_packages")
    (project / "ci.toml").write_text('system_packages = ["libyaml-dev; touch /pwned"]\n')
    result = run_ci("submit", "test", cwd=project, server=server, timeout=300)
    assert result.returncode == 1, describe(result)
    assert "'libyaml-dev; touch /pwned' is not a Debian package name" in result.stderr, describe(
        result
    )
    assert KEPT_IMAGE.search(result.stderr) is None, describe(result)
