"""How a project without requirements.txt is installed, decided from its packaging files.

The cases are the shapes of real published sdists that tests/e2e/test_real_projects.py runs.
"""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

import pytest

from ci_server.runner.config import ProjectConfig
from ci_server.runner.environments import environment_key
from ci_server.runner.project import PIP, InstallPlan, ProjectError, plan_install
from ci_server.runner.scripts import environment_script


def plan(root: Path, **files: str) -> InstallPlan:
    """The install plan of a project made of `files` (`setup_cfg=` is written setup.cfg)."""
    for name, text in files.items():
        filename = name.replace("_", ".")
        (root / filename).write_text(textwrap.dedent(text), encoding="utf-8")
    return plan_install(root, ProjectConfig())


def argv(commands: tuple[str, ...]) -> list[list[str]]:
    return [shlex.split(command) for command in commands]


def pip(*args: str) -> list[str]:
    return [*shlex.split(PIP), *args]


UNINSTALL = ["python", "-m", "pip", "uninstall", "--yes", "--quiet"]


def test_a_static_test_extra_is_installed_without_building_the_project(tmp_path: Path) -> None:
    # exceptiongroup's shape: flit_scm, a dynamic version, static dependencies and extras.
    result = plan(
        tmp_path,
        pyproject_toml="""
            [build-system]
            requires = ["flit_scm"]
            [project]
            name = "exceptiongroup"
            dynamic = ["version"]
            dependencies = ["typing-extensions >= 4.6.0; python_version < '3.13'"]
            [project.optional-dependencies]
            test = ["pytest >= 6"]
        """,
    )

    assert result.description == "pyproject.toml, extra [test]"
    assert argv(result.dependency_commands) == [
        pip("flit_scm"),
        pip("typing-extensions >= 4.6.0; python_version < '3.13'", "pytest >= 6"),
    ]
    assert result.key_files == ("pyproject.toml",)


def test_an_extra_naming_the_project_itself_is_resolved_by_installing_the_project(
    tmp_path: Path,
) -> None:
    # attrs' shape: listed as they are, `attrs[tests-mypy]` would be the published attrs,
    # whose extras may differ from these (or, for a private project, that does not exist).
    result = plan(
        tmp_path,
        pyproject_toml="""
            [build-system]
            requires = ["hatchling", "hatch-vcs"]
            [project]
            name = "attrs"
            dynamic = ["version"]
            dependencies = []
            [project.optional-dependencies]
            tests-mypy = ["mypy>=1.11.1"]
            tests = ["hypothesis", "pytest>=4.3.0", "Attrs[tests-mypy]"]
        """,
    )

    assert result.description == "pyproject.toml, extra [tests]"
    assert argv(result.dependency_commands) == [
        pip("hatchling", "hatch-vcs"),
        pip(".[tests]"),
        [*UNINSTALL, "attrs"],
    ]
    assert not any("Attrs[" in command for command in result.dependency_commands)


def test_another_project_of_a_similar_name_is_no_self_reference(tmp_path: Path) -> None:
    result = plan(
        tmp_path,
        pyproject_toml="""
            [build-system]
            requires = ["hatchling"]
            [project]
            name = "attrs"
            version = "1.0"
            [project.optional-dependencies]
            test = ["attrs-strict", "pytest"]
        """,
    )

    assert argv(result.dependency_commands)[1:] == [pip("attrs-strict", "pytest")]


def test_an_extra_in_setup_cfg_is_named_with_its_file(tmp_path: Path) -> None:
    # pluggy 1.5's shape: pyproject.toml only names the build backend, setup.cfg the rest.
    result = plan(
        tmp_path,
        pyproject_toml="""
            [build-system]
            requires = ["setuptools>=45.0", "setuptools-scm[toml]>=6.2.3"]
        """,
        setup_cfg="""
            [metadata]
            name = pluggy
            [options.extras_require]
            dev =
                pre-commit
            testing =
                pytest
                pytest-benchmark
        """,
        setup_py="from setuptools import setup\nsetup(use_scm_version=True)\n",
    )

    assert result.description == "setup.cfg, extra [testing]"
    assert argv(result.dependency_commands) == [
        pip("setuptools>=45.0", "setuptools-scm[toml]>=6.2.3"),
        pip(".[testing]"),
        [*UNINSTALL, "pluggy"],
    ]
    assert result.key_files == ("pyproject.toml", "setup.py", "setup.cfg")


def test_a_dependency_group_is_installed_as_listed(tmp_path: Path) -> None:
    # iniconfig's shape: no extra, a PEP 735 group (which pip 23 cannot read itself).
    result = plan(
        tmp_path,
        pyproject_toml="""
            [build-system]
            requires = ["setuptools>=77", "setuptools-scm>=8"]
            [project]
            name = "iniconfig"
            dynamic = ["version"]
            [dependency-groups]
            lint = ["ruff"]
            dev = ["pytest>=8.4.2", {include-group = "xdist"}]
            xdist = ["pytest-xdist>=3.8"]
        """,
    )

    assert result.description == "pyproject.toml, dependency group 'dev'"
    assert argv(result.dependency_commands) == [
        pip("setuptools>=77", "setuptools-scm>=8"),
        pip("pytest>=8.4.2", "pytest-xdist>=3.8"),
    ]


def test_a_plain_setup_py_is_installed_for_its_dependencies(tmp_path: Path) -> None:
    # six's shape: setup.py only, no extra.
    result = plan(tmp_path, setup_py='from setuptools import setup\nsetup(name="six")\n')

    assert result.description == "setup.py, no test extra or group"
    assert argv(result.dependency_commands) == [
        pip("setuptools>=64", "wheel"),
        pip("."),
        [*UNINSTALL, "six"],
    ]
    assert len(result.project_commands) == 1
    assert "-e ." in result.project_commands[0]


def test_the_environment_is_installed_into_the_system_python_without_a_cache(
    tmp_path: Path,
) -> None:
    # With the jobs' PIP_USER, root would install into $HOME and leave it root's: the
    # unprivileged job could then not install the project there.
    script = environment_script(plan(tmp_path, setup_py="from setuptools import setup\n"))

    lines = script.splitlines()
    export = lines.index("export PIP_USER=0 PIP_NO_CACHE_DIR=1")
    install = next(i for i, line in enumerate(lines) if PIP in line)
    assert export < install


def test_the_packaging_files_of_a_project_with_requirements_key_its_environment(
    tmp_path: Path,
) -> None:
    """The environment installs the project too, so changing how it is packaged (an entry
    point, a package) must make a new environment."""
    packaged, plain = tmp_path / "packaged", tmp_path / "plain"
    packaged.mkdir()
    plain.mkdir()
    pyproject = '[build-system]\nrequires = ["setuptools"]\n[project]\nname = "x"\n'
    result = plan(packaged, requirements_txt="pytest\n", pyproject_toml=pyproject)
    assert result.key_files == ("requirements.txt", "pyproject.toml")
    assert plan(plain, requirements_txt="pytest\n").key_files == ("requirements.txt",)


def test_tool_settings_alone_do_not_make_a_package(tmp_path: Path) -> None:
    """A pyproject.toml or setup.cfg with only pytest's or a linter's settings is not
    installed: `pip install .` of such a flat project fails or makes an unwanted package."""
    result = plan(
        tmp_path,
        requirements_txt="pytest\n",
        pyproject_toml='[tool.pytest.ini_options]\ntestpaths = ["tests"]\n',
        setup_cfg="[flake8]\nmax-line-length = 100\n",
    )
    assert result.project_commands == ()
    assert result.key_files == ("requirements.txt",)


@pytest.mark.parametrize(
    "files",
    [
        {"pyproject_toml": '[build-system]\nrequires = ["setuptools"]\n'},
        {"setup_cfg": "[metadata]\nname = x\n"},
        {"setup_py": "from setuptools import setup\nsetup()\n"},
    ],
    ids=["pyproject [build-system]", "setup.cfg [metadata]", "setup.py"],
)
def test_packaging_tables_make_a_package(tmp_path: Path, files: dict[str, str]) -> None:
    result = plan(tmp_path, requirements_txt="pytest\n", **files)
    assert len(result.project_commands) == 1
    assert len(result.key_files) == 2


def test_tool_settings_without_requirements_say_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="nothing says how to install"):
        plan(tmp_path, pyproject_toml="[tool.ruff]\nline-length = 100\n")


def test_a_pyproject_without_build_system_is_an_application(tmp_path: Path) -> None:
    """As uv takes it: its dependencies and its dev group are installed, the project is not
    (a flat layout of several packages could not be)."""
    result = plan(
        tmp_path,
        pyproject_toml="""
            [project]
            name = "app"
            version = "0.1.0"
            dependencies = ["attrs"]
            [dependency-groups]
            dev = ["pytest"]
        """,
    )
    assert argv(result.dependency_commands) == [pip("attrs"), pip("pytest")]
    assert result.project_commands == ()
    assert "the project itself is not installed" in result.description
    assert "-e ." not in environment_script(result)


def test_files_a_requirements_file_includes_key_the_environment(tmp_path: Path) -> None:
    """A change to requirements/base.txt, included by requirements.txt, must make a new
    environment; a file outside the project is never read."""
    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "base.txt").write_text("attrs\n-c constraints.txt\n")
    (tmp_path / "requirements" / "constraints.txt").write_text("attrs<30\n")
    (tmp_path / "requirements" / "more.txt").write_text("--requirement=base.txt\n")
    result = plan(
        tmp_path,
        requirements_txt="""
            -r requirements/base.txt
            -rrequirements/more.txt
            -r /dev/zero
            -r ../outside.txt
            -r requirements/missing.txt
            pytest
        """,
    )
    assert result.key_files == (
        "requirements.txt",
        "requirements/base.txt",
        "requirements/more.txt",
        "requirements/constraints.txt",
    )


def test_local_packages_the_requirements_install_key_the_environment(tmp_path: Path) -> None:
    """`./libs/foo` is installed into the environment as it is: a change to its code must
    make a new environment. Editable ones, URLs and the project itself need not."""
    for folder in ("libs/foo", "libs/bar", "libs/baz", "tools/qux"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    result = plan(
        tmp_path,
        requirements_txt="""
            ./libs/foo
            libs/bar[extra] ; python_version >= "3.8"  # a comment
            -e ./libs/baz
            pkg @ file:///srv/pkg
            https://example.org/pkg.zip
            ../outside
            .
            tools/qux
            pytest
        """,
    )
    assert result.key_files == ("requirements.txt", "libs/foo", "libs/bar", "tools/qux")

    def key() -> str:
        return environment_key("sha256:base", result, tmp_path, {})

    before = key()
    assert key() == before
    (tmp_path / "libs" / "foo" / "foo.py").write_text("VALUE = 2\n")
    assert key() != before
