"""How a project is installed, decided from its files: its own dependencies and its tests'.

The first cases are the shapes of real published sdists that tests/e2e/test_real_projects.py
runs; then each place test dependencies are read from (Poetry, requirements files, tox), in
their order of trust, and what the job's log says of each.
"""

from __future__ import annotations

import inspect
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from ci_server.runner import backend_requires
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


def plan_of(
    root: Path, files: Mapping[str, str], config: ProjectConfig | None = None
) -> InstallPlan:
    """The install plan of a project made of `files` (relative path -> text)."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return plan_install(root, config or ProjectConfig())


def argv(commands: tuple[str, ...]) -> list[list[str]]:
    return [shlex.split(command) for command in commands]


def pip(*args: str) -> list[str]:
    return [*shlex.split(PIP), *args]


UNINSTALL = ["python", "-m", "pip", "uninstall", "--yes", "--quiet"]
CALC = """
    [project]
    name = "calc"
    version = "1"
"""
"""The start of a small project's pyproject.toml."""


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
        pip("typing-extensions >= 4.6.0; python_version < '3.13'", "pytest >= 6"),
    ]
    assert argv(result.build_commands)[0] == pip("--quiet", "flit_scm")
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

    assert argv(result.dependency_commands) == [pip("attrs-strict", "pytest")]


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
        pip("pytest>=8.4.2", "pytest-xdist>=3.8"),
    ]


def test_a_plain_setup_py_is_installed_for_its_dependencies(tmp_path: Path) -> None:
    # six's shape: setup.py only, no extra.
    result = plan(tmp_path, setup_py='from setuptools import setup\nsetup(name="six")\n')

    assert result.description == "setup.py, no test extra or group"
    assert argv(result.dependency_commands) == [
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
    assert argv(result.dependency_commands) == [pip("attrs", "pytest")]
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
        return environment_key("sha256:base", "script", tmp_path, result.key_files, {})

    before = key()
    assert key() == before
    (tmp_path / "libs" / "foo" / "foo.py").write_text("VALUE = 2\n")
    assert key() != before


# -- Poetry --------------------------------------------------------------------------------

POETRY_BUILD = """
    [build-system]
    requires = ["poetry-core>=1.0.0"]
    build-backend = "poetry.core.masonry.api"
"""


@pytest.mark.parametrize(
    ("constraint", "requirement"),
    [
        ('"^1.16"', "six (>=1.16,<2.0)"),
        ('"~1.16.0"', "six (>=1.16.0,<1.17.0)"),
        ('"*"', "six"),
        ('"1.16.0"', "six (==1.16.0)"),
        ('{version = "^1.16", python = ">=3.8"}', 'six (>=1.16,<2.0) ; python_version >= "3.8"'),
        ('{version = "^1.16", extras = ["x"]}', "six[x] (>=1.16,<2.0)"),
        (
            '{version = ">=1", markers = "sys_platform == \'linux\'"}',
            'six (>=1) ; sys_platform == "linux"',
        ),
    ],
    ids=["caret", "tilde", "any", "exact", "python marker", "extras", "markers"],
)
def test_poetry_constraints_become_pep_508(
    tmp_path: Path, constraint: str, requirement: str
) -> None:
    result = plan(
        tmp_path,
        pyproject_toml=f"""
            [tool.poetry]
            name = "calc"
            [tool.poetry.group.dev.dependencies]
            six = {constraint}
        """,
    )
    assert argv(result.dependency_commands) == [pip(requirement)]


def test_a_poetry_1_project_installs_its_dependencies_and_dev_group_without_a_build(
    tmp_path: Path,
) -> None:
    """[tool.poetry.dependencies] is read as the project's own (python aside, optional ones
    only for extras), the dev group as its tests'; the docs group is said not to be used."""
    result = plan(
        tmp_path,
        pyproject_toml=POETRY_BUILD
        + """
            [tool.poetry]
            name = "calc"
            version = "0.1.0"
            [tool.poetry.dependencies]
            python = "^3.9"
            attrs = "^23.1"
            rich = {version = "^13", optional = true}
            [tool.poetry.group.dev.dependencies]
            iniconfig = "^2.0"
            [tool.poetry.group.docs.dependencies]
            sphinx = "*"
        """,
    )
    assert result.description == "pyproject.toml, poetry group 'dev'"
    assert argv(result.dependency_commands) == [
        pip("attrs (>=23.1,<24.0)", "iniconfig (>=2.0,<3.0)"),
    ]
    assert argv(result.build_commands)[0] == pip("--quiet", "poetry-core>=1.0.0")
    assert result.notes == (
        "Dependencies from pyproject.toml [tool.poetry.dependencies]",
        "Test dependencies from pyproject.toml [tool.poetry.group.dev.dependencies]",
        "Not used: pyproject.toml [tool.poetry.group.docs.dependencies] (not a test group)",
    )
    assert len(result.project_commands) == 1
    assert result.key_files == ("pyproject.toml",)


def test_poetry_test_groups_and_old_dev_dependencies_are_all_taken(tmp_path: Path) -> None:
    result = plan(
        tmp_path,
        pyproject_toml="""
            [tool.poetry]
            name = "calc"
            [tool.poetry.dev-dependencies]
            six = "^1.16"
            [tool.poetry.group.test.dependencies]
            iniconfig = "^2.0"
        """,
    )
    assert result.description.startswith(
        "pyproject.toml, poetry group 'test' + poetry dev-dependencies"
    )
    assert argv(result.dependency_commands) == [pip("iniconfig (>=2.0,<3.0)", "six (>=1.16,<2.0)")]


def test_a_poetry_2_project_reads_its_own_from_project_and_its_tests_from_a_group(
    tmp_path: Path,
) -> None:
    result = plan(
        tmp_path,
        pyproject_toml=POETRY_BUILD
        + """
            [project]
            name = "calc"
            version = "0.1.0"
            dependencies = ["attrs>=23"]
            [tool.poetry.dependencies]
            attrs = {source = "private"}
            [tool.poetry.group.test.dependencies]
            six = "~1.16"
        """,
    )
    assert argv(result.dependency_commands) == [pip("attrs>=23", "six (>=1.16,<1.17)")]
    assert result.notes[0] == "Dependencies from pyproject.toml [project]"


def test_poetry_path_and_git_dependencies(tmp_path: Path) -> None:
    """A path inside the project is installed from there (and keys the environment), one
    outside cannot be (the log says so); a git one only where the image has git."""
    (tmp_path / "libs" / "helper").mkdir(parents=True)
    (tmp_path / "libs" / "helper" / "setup.py").write_text("from setuptools import setup\n")
    result = plan(
        tmp_path,
        pyproject_toml="""
            [tool.poetry]
            name = "calc"
            [tool.poetry.group.dev.dependencies]
            helper = {path = "libs/helper"}
            outside = {path = "../outside", develop = true}
            fork = {git = "https://example.org/fork.git", tag = "v1"}
        """,
    )
    install, git = result.dependency_commands
    assert argv((install,)) == [pip("./libs/helper")]
    assert git.startswith("if command -v git >/dev/null; then")
    assert "'fork @ git+https://example.org/fork.git@v1'" in git
    assert result.key_files == ("pyproject.toml", "libs/helper")
    assert (
        "Not installed: outside from pyproject.toml [tool.poetry.group.dev.dependencies] "
        "(its path ../outside is not in the project)"
    ) in result.notes
    assert (
        "From git, installed if the image has git: fork @ git+https://example.org/fork.git@v1"
        in (result.notes)
    )


def test_a_poetry_constraint_pep_508_cannot_say_is_left_out_with_a_reason(tmp_path: Path) -> None:
    result = plan(
        tmp_path,
        pyproject_toml="""
            [tool.poetry]
            name = "calc"
            [tool.poetry.group.dev.dependencies]
            six = ">=1,<1.5 || >=1.16"
            attrs = "^^1"
            iniconfig = "^2"
        """,
    )
    assert argv(result.dependency_commands) == [pip("iniconfig (>=2,<3)")]
    skipped = [note for note in result.notes if note.startswith("Not installed:")]
    assert len(skipped) == 2
    assert "union of versions" in skipped[0] and "six" in skipped[0]
    assert "attrs" in skipped[1]


def test_a_poetry_application_is_not_installed_itself(tmp_path: Path) -> None:
    result = plan(
        tmp_path,
        pyproject_toml=POETRY_BUILD
        + """
            [tool.poetry]
            package-mode = false
            [tool.poetry.dependencies]
            six = "^1.16"
        """,
    )
    assert result.project_commands == ()
    assert "the project itself is not installed" in result.description


# -- requirements files for tests ----------------------------------------------------------


def test_test_requirements_without_requirements_txt_come_with_the_projects_own(
    tmp_path: Path,
) -> None:
    result = plan_of(
        tmp_path,
        {
            "setup.py": 'from setuptools import setup\nsetup(name="calc")\n',
            "requirements-test.txt": "iniconfig==2.0.0\n",
            "dev-requirements.txt": "six==1.16.0\n",
        },
    )
    assert result.description == "setup.py, dev-requirements.txt + requirements-test.txt"
    assert argv(result.dependency_commands) == [
        pip(".", "-r", "dev-requirements.txt", "-r", "requirements-test.txt"),
        [*UNINSTALL, "calc"],
    ]
    assert result.key_files == ("setup.py", "dev-requirements.txt", "requirements-test.txt")


def test_a_requirements_folder_alone_names_the_dependencies(tmp_path: Path) -> None:
    """requirements/test.txt, with the base.txt it includes; dev.txt (linters on top of the
    tests' usually) is seen and not used."""
    result = plan_of(
        tmp_path,
        {
            "requirements/base.txt": "six==1.16.0\n",
            "requirements/test.txt": "-r base.txt\niniconfig==2.0.0\n",
            "requirements/dev.txt": "-r test.txt\nflake8\n",
        },
    )
    assert result.description == "requirements/test.txt"
    assert argv(result.dependency_commands) == [pip("-r", "requirements/test.txt")]
    assert result.key_files == ("requirements/test.txt", "requirements/base.txt")
    assert result.notes == (
        "Test dependencies from requirements/test.txt, with requirements/base.txt",
        "Not used: requirements/dev.txt (requirements/test.txt comes first)",
    )
    assert result.project_commands == ()


@pytest.mark.parametrize("name", ["base.txt", "requirements.txt"])
def test_the_folders_base_requirements_are_the_projects_own(tmp_path: Path, name: str) -> None:
    result = plan_of(
        tmp_path,
        {f"requirements/{name}": "six==1.16.0\n", "requirements/tests.txt": "iniconfig\n"},
    )
    assert result.description == f"requirements/{name} + requirements/tests.txt"
    assert argv(result.dependency_commands) == [
        pip("-r", f"requirements/{name}", "-r", "requirements/tests.txt")
    ]


def test_the_folders_base_requirements_are_not_used_when_the_project_declares_its_own(
    tmp_path: Path,
) -> None:
    result = plan_of(
        tmp_path,
        {
            "requirements.txt": "six\n",
            "requirements/base.txt": "attrs\n",
            "requirements/test.txt": "iniconfig\n",
        },
    )
    assert argv(result.dependency_commands) == [
        pip("-r", "requirements.txt", "-r", "requirements/test.txt")
    ]
    assert (
        "Not used: requirements/base.txt (the project's dependencies come from requirements.txt)"
        in result.notes
    )


# -- tox -----------------------------------------------------------------------------------


def test_tox_base_environment_deps_when_nothing_else_names_test_dependencies(
    tmp_path: Path,
) -> None:
    result = plan_of(
        tmp_path,
        {
            "tox.ini": """
                [tox]
                envlist = py3, lint
                [base]
                deps = six==1.16.0
                [testenv]
                deps =
                    {[base]deps}
                    -r{toxinidir}/requirements/tox.txt
                    # a comment
                    coverage: coverage
                commands = pytest {posargs}
                [testenv:lint]
                deps = flake8
            """,
            "requirements/tox.txt": "iniconfig==2.0.0\n",
        },
    )
    assert result.description == "tox.ini [testenv] deps"
    assert argv(result.dependency_commands) == [pip("six==1.16.0", "-r", "requirements/tox.txt")]
    assert result.key_files == ("tox.ini", "requirements/tox.txt")
    assert result.notes == (
        "Test dependencies from tox.ini [testenv] deps, with requirements/tox.txt",
        "Not installed: coverage: coverage from tox.ini [testenv] deps "
        "(for tox's coverage environments only)",
    )


@pytest.mark.parametrize(
    ("line", "taken"),
    [
        ("py3: six", "six"),
        ("py: six", "six"),
        ("py38: six", 'six ; python_version == "3.8"'),
        ("py3.12: six", 'six ; python_version == "3.12"'),
        ("!py38: six", 'six ; python_version != "3.8"'),
        ("py38,py39: six", 'six ; (python_version == "3.8") or (python_version == "3.9")'),
        ("py{38,39}: six", 'six ; (python_version == "3.8") or (python_version == "3.9")'),
        (
            "py38: six; sys_platform == 'linux'",
            "six ; (sys_platform == 'linux') and (python_version == \"3.8\")",
        ),
        ("!coverage: six", "six"),
        ("coverage: six", None),
        ("py38-django: six", None),
        ("py27: six", None),
        ("pypy3: six", None),
        ("!py3: six", None),
    ],
)
def test_tox_factor_conditions(tmp_path: Path, line: str, taken: str | None) -> None:
    """A line for a factor a plain `py3XX` environment lacks is left out; a Python version
    factor becomes a marker."""
    result = plan_of(tmp_path, {"tox.ini": f"[testenv]\ndeps =\n    {line}\n    attrs\n"})
    expected = [taken, "attrs"] if taken else ["attrs"]
    assert argv(result.dependency_commands) == [pip(*expected)]


def test_tox_extras_and_the_project_in_its_deps_are_the_projects_extras(tmp_path: Path) -> None:
    result = plan_of(
        tmp_path,
        {
            "setup.py": 'from setuptools import setup\nsetup(name="calc")\n',
            "tox.ini": "[testenv]\nextras = speed\ndeps =\n    .[fast]\n    six\n",
        },
    )
    assert result.description == "setup.py, tox.ini [testenv] deps"
    assert argv(result.dependency_commands) == [
        pip(".[speed,fast]", "six"),
        [*UNINSTALL, "calc"],
    ]


@pytest.mark.parametrize(
    ("files", "label"),
    [
        (
            {"pyproject.toml": '[tool.tox]\nlegacy_tox_ini = """\n[testenv]\ndeps = six\n"""\n'},
            "pyproject.toml [tool.tox] legacy_tox_ini [testenv] deps",
        ),
        (
            {"pyproject.toml": '[tool.tox.env_run_base]\ndeps = ["six"]\n'},
            "pyproject.toml [tool.tox.env_run_base] deps",
        ),
        ({"tox.toml": '[env_run_base]\ndeps = ["six"]\n'}, "tox.toml [env_run_base] deps"),
        (
            {"setup.cfg": "[tox:tox]\nenvlist = py3\n[testenv]\ndeps = six\n"},
            "setup.cfg [testenv] deps",
        ),
    ],
    ids=["legacy_tox_ini", "native pyproject", "tox.toml", "setup.cfg"],
)
def test_tox_configuration_in_other_files(
    tmp_path: Path, files: dict[str, str], label: str
) -> None:
    result = plan_of(tmp_path, files)
    assert result.description == label
    assert argv(result.dependency_commands) == [pip("six")]


# -- the order of trust --------------------------------------------------------------------


def test_a_test_extra_comes_before_requirements_files_and_tox(tmp_path: Path) -> None:
    result = plan_of(
        tmp_path,
        {
            "pyproject.toml": CALC
            + """
                [project.optional-dependencies]
                test = ["six"]
                dev = ["flake8"]
            """,
            "requirements-test.txt": "attrs\n",
            "tox.ini": "[testenv]\ndeps = iniconfig\n",
        },
    )
    assert argv(result.dependency_commands) == [pip("six")]
    assert result.notes == (
        "Dependencies from pyproject.toml [project]",
        "Test dependencies from pyproject.toml extra [test]",
        "Not used: pyproject.toml extra [dev] (pyproject.toml extra [test] comes first)",
        "Not used: requirements-test.txt "
        "(the test dependencies come from pyproject.toml extra [test])",
        "Not used: tox.ini [testenv] deps "
        "(the test dependencies come from pyproject.toml extra [test])",
    )


def test_requirements_files_come_before_tox(tmp_path: Path) -> None:
    result = plan_of(
        tmp_path,
        {"requirements/testing.txt": "attrs\n", "tox.ini": "[testenv]\ndeps = iniconfig\n"},
    )
    assert argv(result.dependency_commands) == [pip("-r", "requirements/testing.txt")]
    assert (
        "Not used: tox.ini [testenv] deps "
        "(the test dependencies come from requirements/testing.txt)" in result.notes
    )


def test_an_empty_test_extra_names_nothing_and_the_next_place_is_read(tmp_path: Path) -> None:
    result = plan_of(
        tmp_path,
        {
            "pyproject.toml": CALC
            + """
                [project.optional-dependencies]
                test = []
            """,
            "tox.ini": "[testenv]\ndeps = iniconfig\n",
        },
    )
    assert argv(result.dependency_commands) == [pip("iniconfig")]
    assert (
        result.description == "pyproject.toml, tox.ini [testenv] deps (no [build-system]: "
        "the project itself is not installed)"
    )


def test_nothing_that_names_dependencies_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="nothing says how to install its test dependencies"):
        plan_of(tmp_path, {"tox.ini": "[tox]\nenvlist = py3\n", "test_x.py": ""})


def test_files_read_for_test_dependencies_key_the_environment(tmp_path: Path) -> None:
    """requirements/test.txt, the base.txt it includes, tox.ini and the files its deps
    name: a change to any makes a new environment."""
    result = plan_of(
        tmp_path,
        {"requirements/test.txt": "-r base.txt\n", "requirements/base.txt": "six\n"},
    )
    before = environment_key("sha256:base", "script", tmp_path, result.key_files, {})
    (tmp_path / "requirements" / "base.txt").write_text("six==1.16.0\n")
    assert environment_key("sha256:base", "script", tmp_path, result.key_files, {}) != before

    tox = tmp_path / "tox"
    tox.mkdir()
    result = plan_of(tox, {"tox.ini": "[testenv]\ndeps = -rreq.txt\n", "req.txt": "six\n"})
    before = environment_key("sha256:base", "script", tox, result.key_files, {})
    (tox / "req.txt").write_text("six==1.16.0\n")
    assert environment_key("sha256:base", "script", tox, result.key_files, {}) != before


def test_the_first_test_extra_that_names_anything_is_chosen(tmp_path: Path) -> None:
    result = plan_of(
        tmp_path,
        {
            "pyproject.toml": CALC
            + """
                [project.optional-dependencies]
                test = []
                dev = ["six"]
            """,
        },
    )
    assert argv(result.dependency_commands) == [pip("six")]
    assert "Not used: pyproject.toml extra [test] (pyproject.toml extra [dev] comes first)" in (
        result.notes
    )


def test_extras_tox_asks_of_a_project_that_is_not_packaged_are_said_not_installed(
    tmp_path: Path,
) -> None:
    result = plan_of(tmp_path, {"tox.ini": "[testenv]\nextras = test\ndeps = six\n"})
    assert argv(result.dependency_commands) == [pip("six")]
    assert "Not installed: the project's extras [test] (it is not packaged)" in result.notes


@pytest.mark.parametrize(
    "pyproject",
    [
        "tool = 3\n",
        "[tool]\npoetry = 3\ntox = 3\npytest = 3\n",
        '[tool.poetry]\nextras = {test = "six"}\ngroup = 3\ndev-dependencies = 3\n',
        "[tool.poetry.dependencies]\nsix = 3\n[tool.poetry.group.dev]\ndependencies = 3\n",
        '[tool.tox]\nlegacy_tox_ini = "[testenv\\n"\n',
        "[tool.tox]\nenv_run_base = 3\n",
    ],
)
def test_odd_tables_in_pyproject_are_no_crash(tmp_path: Path, pyproject: str) -> None:
    """An upload is untrusted: tables of the wrong shape are read as absent, or said to be
    left out, never a crash of the job."""
    result = plan_of(tmp_path, {"pyproject.toml": pyproject, "requirements.txt": "pytest\n"})
    assert argv(result.dependency_commands)[0] == pip("-r", "requirements.txt")


def test_tox_configuration_is_read_from_the_file_tox_itself_reads(tmp_path: Path) -> None:
    """tox.ini, then setup.cfg with [tox:tox], then pyproject.toml, then tox.toml."""
    result = plan_of(
        tmp_path,
        {
            "setup.cfg": "[tox:tox]\nenvlist = py3\n[testenv]\ndeps = six\n",
            "pyproject.toml": '[tool.tox.env_run_base]\ndeps = ["attrs"]\n',
            "tox.toml": '[env_run_base]\ndeps = ["iniconfig"]\n',
        },
    )
    assert argv(result.dependency_commands) == [pip("six")]


SETUP_WITH_TEST_EXTRA = (
    'from setuptools import setup\nsetup(name="calc", extras_require={"test": ["attrs"]})\n'
)


@pytest.mark.parametrize(
    ("files", "install"),
    [
        (
            {"setup.py": SETUP_WITH_TEST_EXTRA, "requirements.txt": "-e .\nsix\n"},
            pip("-e", ".[test]", "-r", "requirements.txt"),
        ),
        (
            {
                "setup.py": 'from setuptools import setup\nsetup(name="calc")\n',
                "requirements-test.txt": "--editable=.[test]\n",
            },
            pip("-r", "requirements-test.txt"),
        ),
        (
            {
                "setup.py": SETUP_WITH_TEST_EXTRA,
                "requirements.txt": "-r base.txt\n",
                "base.txt": ".  # the project\n",
            },
            pip(".[test]", "-r", "requirements.txt"),
        ),
    ],
    ids=["editable, with a test extra", "editable", "regular, in an included file"],
)
def test_a_requirements_file_installing_the_project_itself_sets_how_it_is_installed(
    tmp_path: Path, files: dict[str, str], install: list[str]
) -> None:
    """pip takes the project once, in one form (`.[test]` beside `-e .` is refused), and
    the file means it to stay installed."""
    commands = argv(plan_of(tmp_path, files).dependency_commands)
    assert install in commands
    assert not any(command[:4] == UNINSTALL[:4] for command in commands)


# -- the project's own install ----------------------------------------------------------------


def test_a_project_with_requirements_and_a_build_installs_its_backend_first(
    tmp_path: Path,
) -> None:
    """Without build isolation, `pip install -e .` needs the backend installed: a
    requirements.txt rarely lists it."""
    result = plan(
        tmp_path,
        requirements_txt="pytest\n",
        pyproject_toml="""
            [build-system]
            requires = ["hatchling"]
            build-backend = "hatchling.build"
        """,
    )
    assert argv(result.build_commands)[0] == pip("--quiet", "hatchling")
    assert "-e ." in result.project_commands[0]


def test_a_project_without_a_build_has_no_build_commands(tmp_path: Path) -> None:
    assert plan(tmp_path, requirements_txt="pytest\n").build_commands == ()


def ask_backend(project: Path) -> subprocess.CompletedProcess[str]:
    """Run backend_requires.py as the container does, in `project`, with this Python."""
    source = inspect.getsource(backend_requires)
    return subprocess.run(
        [sys.executable, "-I", "-c", source],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


IN_TREE_BACKEND = """
    [build-system]
    requires = []
    build-backend = "backend"
    backend-path = ["."]
"""


def test_the_backend_is_asked_what_it_needs_for_an_editable_build_and_a_wheel(
    tmp_path: Path,
) -> None:
    """As hatchling names `editables` only when asked; its chatter is not the answer."""
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(IN_TREE_BACKEND))
    (tmp_path / "backend.py").write_text(
        textwrap.dedent("""
            def get_requires_for_build_editable(config_settings=None):
                print("running egg_info")
                return ["editables~=0.3", "wheel"]

            def get_requires_for_build_wheel(config_settings=None):
                print("running bdist_wheel")
                return ["wheel"]
        """)
    )
    result = ask_backend(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["editables~=0.3", "wheel"]


def test_a_backend_without_those_hooks_needs_nothing_more(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(IN_TREE_BACKEND))
    (tmp_path / "backend.py").write_text("def build_wheel(wheel_directory):\n    pass\n")
    result = ask_backend(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_a_backend_that_fails_says_why(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(IN_TREE_BACKEND))
    (tmp_path / "backend.py").write_text(
        "def get_requires_for_build_editable(config_settings=None):\n"
        "    raise RuntimeError('no compiler for this')\n"
    )
    result = ask_backend(tmp_path)
    assert result.returncode == 1
    assert "no compiler for this" in result.stderr
    assert result.stdout == ""
