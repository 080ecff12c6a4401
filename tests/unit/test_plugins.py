"""The pytest plugins a project needs and does not list: one small project per rule."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from ci_server.runner.config import ProjectConfig
from ci_server.runner.environments import environment_key
from ci_server.runner.plugins import needed_plugins
from ci_server.runner.project import plan_install
from ci_server.runner.scripts import environment_script
from tests.unit.test_project import CALC


def write(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def plugins(
    root: Path, files: Mapping[str, str], config: ProjectConfig | None = None
) -> list[tuple[str, str]]:
    """(plugin, why) for the project made of `files` and `requirements.txt: pytest`."""
    write(root, {"requirements.txt": "pytest\n", **files})
    plan = plan_install(root, config or ProjectConfig())
    prefix = "Adding pytest plugin "
    notes = [note.removeprefix(prefix) for note in plan.notes if note.startswith(prefix)]
    return [(name, why) for name, why in (note.split(": ", 1) for note in notes)]


TEST_USING = "def test_it({fixture}):\n    pass\n"


@pytest.mark.parametrize(
    ("files", "plugin", "why"),
    [
        (
            {"pytest.ini": "[pytest]\naddopts = -ra --cov=calc --cov-report=term\n"},
            "pytest-cov",
            "--cov=calc in pytest.ini addopts",
        ),
        (
            {"tests/test_a.py": "import pytest\n@pytest.mark.no_cover\ndef test_a(): pass\n"},
            "pytest-cov",
            "the no_cover marker in tests/test_a.py",
        ),
        (
            {"pyproject.toml": '[tool.pytest.ini_options]\naddopts = ["-n", "auto"]\n'},
            "pytest-xdist",
            "-n in pyproject.toml [tool.pytest.ini_options] addopts",
        ),
        (
            {"pytest.ini": "[pytest]\naddopts = -n4\n"},
            "pytest-xdist",
            "-n4 in pytest.ini addopts",
        ),
        (
            {"tox.ini": "[pytest]\naddopts = --dist=loadscope\n"},
            "pytest-xdist",
            "--dist=loadscope in tox.ini [pytest] addopts",
        ),
        (
            {"setup.cfg": "[tool:pytest]\nasyncio_mode = auto\n"},
            "pytest-asyncio",
            "asyncio_mode in setup.cfg [tool:pytest]",
        ),
        (
            {"tests/conftest.py": "import pytest\n@pytest.fixture\ndef m(mocker):\n    pass\n"},
            "pytest-mock",
            "the mocker fixture in tests/conftest.py",
        ),
        (
            {"test_a.py": "def test_a(\n    tmp_path,\n    mocker: 'MockerFixture',\n): pass\n"},
            "pytest-mock",
            "the mocker fixture in test_a.py",
        ),
        (
            {"pytest.ini": "[pytest]\naddopts = --timeout 30\n"},
            "pytest-timeout",
            "--timeout in pytest.ini addopts",
        ),
        (
            {"pytest.ini": "[pytest]\ntimeout = 30\n"},
            "pytest-timeout",
            "timeout in pytest.ini",
        ),
        (
            {"pytest.ini": "[pytest]\nDJANGO_SETTINGS_MODULE = site.settings\n"},
            "pytest-django",
            "django_settings_module in pytest.ini",
        ),
        (
            {"tests/test_a.py": TEST_USING.format(fixture="benchmark")},
            "pytest-benchmark",
            "the benchmark fixture in tests/test_a.py",
        ),
        (
            {"tests/test_a.py": TEST_USING.format(fixture="httpx_mock")},
            "pytest-httpx",
            "the httpx_mock fixture in tests/test_a.py",
        ),
        (
            {"pytest.ini": "[pytest]\naddopts = --randomly-seed=1\n"},
            "pytest-randomly",
            "--randomly-seed=1 in pytest.ini addopts",
        ),
        (
            {"pytest.ini": "[pytest]\naddopts = --reruns 2 --reruns-delay 1\n"},
            "pytest-rerunfailures",
            "--reruns in pytest.ini addopts",
        ),
        (
            {"setup.cfg": "[tool:pytest]\naddopts = --doctest-plus\n"},
            "pytest-doctestplus",
            "--doctest-plus in setup.cfg [tool:pytest] addopts",
        ),
        (
            {"pytest.ini": "[pytest]\nenv =\n    MODE=test\n"},
            "pytest-env",
            "env in pytest.ini",
        ),
        (
            {"pytest.ini": "[pytest]\naddopts = --mypy\n"},
            "pytest-mypy",
            "--mypy in pytest.ini addopts",
        ),
        (
            {"test_a.py": "import pytest\npytestmark = pytest.mark.asyncio\n"},
            "pytest-asyncio",
            "the asyncio marker in test_a.py",
        ),
        (
            {
                "check_a.py": TEST_USING.format(fixture="mocker"),
                "pytest.ini": "[pytest]\npython_files = check_*.py\n",
            },
            "pytest-mock",
            "the mocker fixture in check_a.py",
        ),
        (
            {"pytest.ini": "[pytest]\nrequired_plugins = pytest-order>=1.0\n"},
            "pytest-order>=1.0",
            "required_plugins in pytest.ini",
        ),
        (
            {"test_a.py": '@pytest.mark.usefixtures("requests_mock")\ndef test_a(): pass\n'},
            "requests-mock",
            "the requests_mock fixture in test_a.py",
        ),
    ],
)
def test_a_rule_adds_its_plugin_and_says_why(
    tmp_path: Path, files: dict[str, str], plugin: str, why: str
) -> None:
    assert plugins(tmp_path, files) == [(plugin, why)]


def test_options_given_in_ci_toml_count_too(tmp_path: Path) -> None:
    config = ProjectConfig(pytest_args=("--timeout=5",), env={"PYTEST_ADDOPTS": "-n 2"})
    assert plugins(tmp_path, {}, config) == [
        ("pytest-xdist", "-n in ci.toml PYTEST_ADDOPTS"),
        ("pytest-timeout", "--timeout=5 in ci.toml pytest_args"),
    ]


@pytest.mark.parametrize(
    "files",
    [
        {"pytest.ini": "[pytest]\naddopts = --frobnicate -p no:randomly --durations=5\n"},
        {"tests/test_a.py": TEST_USING.format(fixture="tmp_path, monkeypatch, capsys")},
        {"tests/helpers.py": TEST_USING.format(fixture="mocker")},
        {"tests/test_a.py": "# the mocker fixture is not used here\ndef test_a(): pass\n"},
        {".venv/lib/test_vendored.py": TEST_USING.format(fixture="mocker")},
        {"build/lib/tests/test_a.py": TEST_USING.format(fixture="mocker")},
        {
            "pytest.ini": "[pytest]\n",
            "pyproject.toml": '[tool.pytest.ini_options]\naddopts = "--cov"',
        },
        {"setup.cfg": "[flake8]\ntimeout = 3\n"},
        {
            "pytest.ini": "[pytest]\nmarkers =\n    dependency: tests that need the network\n",
            "test_a.py": "import pytest\n@pytest.mark.dependency\ndef test_a(): pass\n",
        },
        {
            "pyproject.toml": '[tool.pytest.ini_options]\nmarkers = ["timeout(s): ours"]\n',
            "test_a.py": "import pytest\n@pytest.mark.timeout(3)\ndef test_a(): pass\n",
        },
        {
            "tests/conftest.py": "import pytest\n@pytest.fixture\ndef benchmark():\n    return 1\n",
            "tests/test_a.py": TEST_USING.format(fixture="benchmark"),
        },
    ],
    ids=[
        "unknown and builtin options",
        "builtin fixtures",
        "not a test module",
        "a word, not a parameter",
        "a hidden folder",
        "a build folder",
        "pytest reads pytest.ini first",
        "another tool's section",
        "a marker the project registers",
        "a marker registered in a TOML list",
        "a fixture the project defines",
    ],
)
def test_what_the_table_does_not_know_stays_the_users(
    tmp_path: Path, files: dict[str, str]
) -> None:
    assert plugins(tmp_path, files) == []


@pytest.mark.parametrize("listed", ["pytest-cov==4.1.0", "pytest_cov", "Pytest.Cov>=4"])
def test_a_plugin_the_dependencies_list_is_not_added(tmp_path: Path, listed: str) -> None:
    write(tmp_path, {"requirements.txt": f"-r requirements/base.txt\n{listed}\n"})
    write(tmp_path, {"requirements/base.txt": "pytest\n"})
    write(tmp_path, {"pytest.ini": "[pytest]\naddopts = --cov\n"})
    plan = plan_install(tmp_path, ProjectConfig())
    assert not any("pytest-cov" in command for command in plan.dependency_commands)
    assert not any(note.startswith("Adding") for note in plan.notes)


def test_a_plugin_listed_by_a_static_extra_or_group_is_not_added(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "pyproject.toml": CALC
            + """
                [project.optional-dependencies]
                test = ["pytest-mock>=3"]
                [dependency-groups]
                dev = ["pytest-xdist"]
                [tool.pytest.ini_options]
                addopts = "-n 2"
            """,
            "tests/test_a.py": TEST_USING.format(fixture="mocker"),
        },
    )
    assert needed_plugins(tmp_path, {}, ProjectConfig(), frozenset()) != []
    plan = plan_install(tmp_path, ProjectConfig())
    assert not any(note.startswith("Adding") for note in plan.notes)


def test_plugins_are_installed_last_and_held_to_what_is_installed(tmp_path: Path) -> None:
    """A plugin's latest release may want another pytest: the one installed is kept (a
    release of the plugin that fits it is chosen), by pip's constraints."""
    write(
        tmp_path,
        {
            "requirements.txt": "pytest==7.4.4\n",
            "pytest.ini": "[pytest]\naddopts = --cov -n 2\n",
            "tests/test_a.py": TEST_USING.format(fixture="mocker"),
        },
    )
    plan = plan_install(tmp_path, ProjectConfig())
    freeze, install = plan.dependency_commands[-1].split(" && ")
    assert shlex.split(freeze) == [
        "python",
        "-m",
        "pip",
        "list",
        "--format=freeze",
        ">",
        "/tmp/ci-installed.txt",
    ]
    assert shlex.split(install)[-5:] == [
        "-c",
        "/tmp/ci-installed.txt",
        "pytest-cov",
        "pytest-xdist",
        "pytest-mock",
    ]


def test_the_plugins_needed_key_the_environment(tmp_path: Path) -> None:
    """The plugins are part of the install: a test starting to use `mocker` makes a new
    environment; another test without a plugin does not."""
    write(tmp_path, {"requirements.txt": "pytest\n", "tests/test_a.py": "def test_a(): pass\n"})

    def key() -> str:
        plan = plan_install(tmp_path, ProjectConfig())
        return environment_key(
            "sha256:base", environment_script(plan), tmp_path, plan.key_files, {}
        )

    before = key()
    write(tmp_path, {"tests/test_b.py": "def test_b(tmp_path): pass\n"})
    assert key() == before
    write(tmp_path, {"tests/test_c.py": TEST_USING.format(fixture="mocker")})
    assert key() != before


def test_a_plugin_option_among_the_jobs_own_pytest_args_adds_it(tmp_path: Path) -> None:
    """`ci submit test --rerun-failures 3` sends `--reruns 3`: pytest-rerunfailures comes."""
    write(tmp_path, {"requirements.txt": "pytest\n", "tests/test_a.py": "def test_a(): pass\n"})
    assert plan_install(tmp_path, ProjectConfig()).notes == ("Dependencies from requirements.txt",)
    plan = plan_install(tmp_path, ProjectConfig(), ["--reruns", "3"])
    assert "Adding pytest plugin pytest-rerunfailures: --reruns in the job's pytest arguments" in (
        plan.notes
    )
    assert "pytest-rerunfailures" in plan.dependency_commands[-1]


def test_the_files_of_a_manifest_name_the_same_first_users_as_a_walk(tmp_path: Path) -> None:
    """A job sent as contents gives plan_install its files (no walk of the disk): the
    plugins found, and the file each reason names (the first in a walk's order: a folder's
    files, then its folders), are those a walk finds; skipped folders stay skipped."""
    files = {
        "requirements.txt": "pytest\n",
        "tests/z/test_deep.py": TEST_USING.format(fixture="mocker"),
        "tests/test_top.py": TEST_USING.format(fixture="mocker"),
        "tests/a/test_bench.py": TEST_USING.format(fixture="benchmark"),
        "node_modules/test_x.py": TEST_USING.format(fixture="httpx_mock"),
        "data/readme.txt": "not a test\n",
    }
    write(tmp_path, files)
    walked = plan_install(tmp_path, ProjectConfig())
    listed = plan_install(tmp_path, ProjectConfig(), paths=sorted(files))
    assert listed.notes == walked.notes
    assert [n for n in listed.notes if n.startswith("Adding")] == [
        "Adding pytest plugin pytest-mock: the mocker fixture in tests/test_top.py",
        "Adding pytest plugin pytest-benchmark: the benchmark fixture in tests/a/test_bench.py",
    ]
