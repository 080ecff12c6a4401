"""The images a job runs in, built in layers (system packages, environment, this source's
build), through the pipeline with a fake executor. tests/e2e/test_project_installs.py
runs the same with real Docker."""

from __future__ import annotations

from pathlib import Path

from ci_server.models import JobStatus
from ci_server.runner.layers import APT_CAPABILITIES
from ci_server.runner.scripts import BY_SOURCE
from tests.fakes import PASSING_PROJECT, FakeExecutor, FakeRun
from tests.unit.one_process import IMAGE, harness
from tests.unit.test_pipeline import log_lines

WITH_LIBPQ = {**PASSING_PROJECT, "ci.toml": 'system_packages = ["libpq-dev", "gcc"]\n'}
PACKAGED = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools"]\n'
    '[project]\nname = "calc"\nversion = "1"\n',
    "calc/__init__.py": "def add(a, b):\n    return a + b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n",
}


async def test_system_packages_are_installed_by_apt_in_a_build_of_their_own(
    tmp_path: Path,
) -> None:
    """Only that build gets apt's capabilities; it runs no code of the project. The
    environment is built on it, and the tests run without any capability."""
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit(WITH_LIBPQ)).id)
        assert job.status is JobStatus.SUCCEEDED

        system, environment = executor.builds
        assert system.spec.image == IMAGE
        assert system.spec.capabilities == APT_CAPABILITIES and system.spec.user == "0:0"
        assert "apt-get" in system.spec.script and "gcc libpq-dev" in system.spec.script
        assert "/src" not in system.spec.script  # the project's files are not used
        assert environment.spec.image == system.tag
        assert environment.spec.capabilities == ()
        (run,) = executor.specs
        assert run.image == environment.tag
        assert run.capabilities == () and run.user == "1000:1000"


async def test_the_system_packages_image_is_shared_and_its_packages_key_it(
    tmp_path: Path,
) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit(WITH_LIBPQ)).id)
        other_tests = {**WITH_LIBPQ, "test_more.py": "def test_more():\n    pass\n"}
        reused = await h.submit(other_tests)
        events = await h.events_until_end(reused.id)
        assert len(executor.builds) == 2  # nothing built again
        said = log_lines(events, "system")
        assert any(line.startswith("System packages") for line in said), said
        assert any(line.endswith("reused: gcc libpq-dev") for line in said), said

        more = {**WITH_LIBPQ, "ci.toml": 'system_packages = ["libpq-dev", "libyaml-dev"]\n'}
        await h.finished((await h.submit(more)).id)
        assert len(executor.builds) == 4  # new packages: a new system image, its environment
        assert executor.builds[2].tag != executor.builds[0].tag


async def test_a_failed_install_of_system_packages_fails_the_job(tmp_path: Path) -> None:
    executor = FakeExecutor(build_plan=FakeRun(exit_code=100))
    async with harness(tmp_path, executor) as h:
        job = await h.finished((await h.submit(WITH_LIBPQ)).id)
        assert job.status is JobStatus.FAILED
        assert job.reason == "installing system packages failed"
        assert len(executor.builds) == 1 and executor.specs == []


async def test_without_kept_environments_system_packages_are_kept_all_the_same(
    tmp_path: Path,
) -> None:
    """A job cannot run apt: the packages come from their image, kept; the environment on
    it is built for the job alone and removed after it; the tests have no network."""
    executor = FakeExecutor()
    async with harness(tmp_path, executor, env_cache=False) as h:
        job = await h.finished((await h.submit(WITH_LIBPQ)).id)
        assert job.status is JobStatus.SUCCEEDED
        system, environment = executor.builds
        (run,) = executor.specs
        assert environment.spec.image == system.tag and environment.spec.network
        assert run.image == environment.tag and not run.network
        assert "Installing dependencies" not in run.script
        assert list(executor.images) == [system.tag]


async def test_a_project_its_environment_cannot_keep_is_built_once_per_source(
    tmp_path: Path,
) -> None:
    """The environment says so (BY_SOURCE): the project is built on it, keyed by every file;
    the same files reuse that build, any change builds anew on the same environment."""
    executor = FakeExecutor(built_files={BY_SOURCE})
    async with harness(tmp_path, executor) as h:
        first = await h.finished((await h.submit(PACKAGED)).id)
        assert first.status is JobStatus.SUCCEEDED
        environment, source = executor.builds
        assert source.spec.image == environment.tag and source.tag != environment.tag
        assert "Building the project from this source" in source.spec.script
        assert executor.specs[-1].image == source.tag

        same = await h.submit(PACKAGED)
        events = await h.events_until_end(same.id)
        assert len(executor.builds) == 2
        said = log_lines(events, "system")
        assert any("reused: this source is built already" in line for line in said), said
        assert executor.specs[-1].image == source.tag

        changed = {**PACKAGED, "tests/test_calc.py": PACKAGED["tests/test_calc.py"] + "\n"}
        await h.finished((await h.submit(changed)).id)
        assert len(executor.builds) == 3
        assert executor.builds[2].spec.image == environment.tag
        assert executor.builds[2].tag not in (source.tag, environment.tag)
        assert executor.specs[-1].image == executor.builds[2].tag


async def test_a_project_its_environment_keeps_is_not_built_again(tmp_path: Path) -> None:
    executor = FakeExecutor()
    async with harness(tmp_path, executor) as h:
        await h.finished((await h.submit(PACKAGED)).id)
        changed = {**PACKAGED, "tests/test_calc.py": PACKAGED["tests/test_calc.py"] + "\n"}
        await h.finished((await h.submit(changed)).id)
        (environment,) = executor.builds
        assert [run.image for run in executor.specs] == [environment.tag] * 2
