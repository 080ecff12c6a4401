"""A project's files in hostile shapes: only a plan or a clear error may come out.

Whatever the packaging, tox, pytest and requirements files hold, `load_config` and
`plan_install` answer with a plan or with `ConfigError`/`ProjectError` naming the file (the
job fails with that reason), never another exception (the job would end in `error`, as if
the server were broken), and in bounded time and memory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_server.models import CIError
from ci_server.runner.config import KNOWN_KEYS, ConfigError, load_config
from ci_server.runner.project import InstallPlan, ProjectError, plan_install
from ci_server.runner.shapes import MAX_FILE_BYTES

Files = Mapping[str, str | bytes]

NOTHING_TO_INSTALL = "nothing says how to install its test dependencies"
PYPROJECT = 'name = "calc"\nversion = "1"\n'


def outcome(root: Path, files: Files) -> InstallPlan | CIError:
    """The plan of a project made of `files`, or the project's error (anything else is
    raised: a crash)."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    try:
        return plan_install(root, load_config(root))
    except (ProjectError, ConfigError) as e:
        return e


@dataclass(frozen=True)
class Shape:
    name: str
    files: Files
    error: str | None = None
    """The whole message of the job's failure; None: a plan comes out."""


REFUSED = [
    Shape("project-is-an-integer", {"pyproject.toml": "project = 3\n"},
          "pyproject.toml: [project] must be a table, not an integer"),
    Shape("project-is-an-array", {"pyproject.toml": "project = []\n"},
          "pyproject.toml: [project] must be a table, not an array"),
    Shape("build-system-is-an-integer", {"pyproject.toml": "build-system = 3\n"},
          "pyproject.toml: [build-system] must be a table, not an integer"),
    Shape("build-requires-is-a-string",
          {"pyproject.toml": '[build-system]\nrequires = "setuptools"\n'},
          "pyproject.toml: [build-system] requires must be an array of strings, not a string"),
    Shape("build-requires-holds-an-integer",
          {"pyproject.toml": "[build-system]\nrequires = [1]\n"},
          "pyproject.toml: [build-system] requires must be an array of strings, "
          "not an array holding an integer"),
    Shape("dependencies-is-a-string",
          {"pyproject.toml": f'[project]\n{PYPROJECT}dependencies = "pytest"\n'},
          "pyproject.toml: [project] dependencies must be an array of strings, not a string"),
    Shape("dependencies-is-a-table",
          {"pyproject.toml": f"[project]\n{PYPROJECT}dependencies = {{pytest = 1}}\n"},
          "pyproject.toml: [project] dependencies must be an array of strings, not a table"),
    Shape("dependencies-holds-an-integer",
          {"pyproject.toml": f"[project]\n{PYPROJECT}dependencies = [1]\n"},
          "pyproject.toml: [project] dependencies must be an array of strings, "
          "not an array holding an integer"),
    Shape("optional-dependencies-is-an-array",
          {"pyproject.toml": f"[project]\n{PYPROJECT}optional-dependencies = []\n"},
          "pyproject.toml: [project.optional-dependencies] must be a table, not an array"),
    Shape("an-extra-is-a-string",
          {"pyproject.toml": f'[project]\n{PYPROJECT}optional-dependencies = {{test = "x"}}\n'},
          "pyproject.toml: [project.optional-dependencies] test must be an array of strings, "
          "not a string"),
    Shape("an-extra-holds-a-table",
          {"pyproject.toml": f"[project]\n{PYPROJECT}optional-dependencies = {{test = [{{}}]}}\n"},
          "pyproject.toml: [project.optional-dependencies] test must be an array of strings, "
          "not an array holding a table"),
    Shape("dynamic-is-an-integer", {"pyproject.toml": f"[project]\n{PYPROJECT}dynamic = 3\n"},
          "pyproject.toml: [project] dynamic must be an array of strings, not an integer"),
    Shape("dynamic-is-a-string",
          {"pyproject.toml": f'[project]\n{PYPROJECT}dynamic = "dependencies"\n'},
          "pyproject.toml: [project] dynamic must be an array of strings, not a string"),
    Shape("name-is-a-boolean",
          {"pyproject.toml": "[project]\nname = true\ndependencies = []\n"},
          "pyproject.toml: [project] name must be a string, not a boolean"),
    Shape("dependency-groups-is-an-integer", {"pyproject.toml": "dependency-groups = 3\n"},
          "pyproject.toml: [dependency-groups] must be a table, not an integer"),
    Shape("a-dependency-group-is-an-integer",
          {"pyproject.toml": "dependency-groups = {test = 5}\n"},
          "pyproject.toml: [dependency-groups] test must be an array, not an integer"),
    Shape("a-dependency-group-holds-an-integer",
          {"pyproject.toml": "dependency-groups = {test = [5]}\n"},
          "pyproject.toml: [dependency-groups] test holds 5, neither a requirement nor "
          "an {include-group = ...} table"),
    Shape("a-dependency-group-includes-itself",
          {"pyproject.toml": "[dependency-groups]\ntest = [{include-group = 'dev'}]\n"
                             "dev = [{include-group = 'test'}]\n"},
          "pyproject.toml: [dependency-groups] test includes itself (through dev)"),
    Shape("a-dependency-group-includes-a-missing-one",
          {"pyproject.toml": "[dependency-groups]\ntest = [{include-group = 'nope'}]\n"},
          "pyproject.toml: [dependency-groups] test includes nope, which is no group"),
    Shape("a-dependency-group-includes-a-chain-too-long",
          {"pyproject.toml": "[dependency-groups]\ntest = [{include-group = 'g0'}]\n"
           + "".join(f"g{n} = [{{include-group = 'g{n + 1}'}}]\n" for n in range(2000))
           + "g2000 = ['pytest']\n"},
          "pyproject.toml: [dependency-groups] test includes groups more than 100 deep"),
    Shape("pyproject-is-binary", {"pyproject.toml": b"\xff\xfe\x00[project]"},
          "pyproject.toml is not valid TOML: 'utf-8' codec can't decode byte 0xff in "
          "position 0: invalid start byte"),
    Shape("pyproject-nests-arrays-too-deep",
          {"pyproject.toml": "a = " + "[" * 50_000 + "]" * 50_000 + "\n"},
          "pyproject.toml is not valid TOML: its arrays or tables nest too deep"),
    Shape("pyproject-nests-tables-too-deep",
          {"pyproject.toml": "a = " + "{b = " * 5_000 + "1" + "}" * 5_000 + "\n"},
          "pyproject.toml is not valid TOML: its arrays or tables nest too deep"),
    Shape("pyproject-is-huge",
          {"pyproject.toml": "#" * MAX_FILE_BYTES + "\n", "requirements.txt": "pytest\n"},
          f"pyproject.toml is larger than {MAX_FILE_BYTES:,} bytes: not read"),
    Shape("a-requirements-file-is-huge",
          {"requirements.txt": "pytest\n" * (MAX_FILE_BYTES // 7 + 1)},
          f"requirements.txt is larger than {MAX_FILE_BYTES:,} bytes: not read"),
    Shape("an-included-requirements-file-is-huge",
          {"requirements.txt": "-r big.txt\n", "big.txt": "#" * (MAX_FILE_BYTES + 1)},
          f"big.txt is larger than {MAX_FILE_BYTES:,} bytes: not read"),
    Shape("ci-toml-nests-too-deep",
          {"ci.toml": "install = " + "[" * 50_000 + "]" * 50_000 + "\n",
           "requirements.txt": "pytest\n"},
          "ci.toml is not valid TOML: its arrays or tables nest too deep"),
    Shape("ci-toml-is-huge", {"ci.toml": "#" * (MAX_FILE_BYTES + 1)},
          f"ci.toml is larger than {MAX_FILE_BYTES:,} bytes: not read"),
    Shape("ci-toml-env-holds-an-integer",
          {"ci.toml": "[env]\nA = 1\n", "requirements.txt": "pytest\n"},
          "ci.toml: [env] A must be a string, not an integer"),
    Shape("ci-toml-install-is-a-string",
          {"ci.toml": 'install = "make"\n', "requirements.txt": "pytest\n"},
          "ci.toml: install must be an array of strings, not a string"),
]  # fmt: skip

LONG_NAME = "a" * 5_000
"""Longer than a file name may be (ENAMETOOLONG)."""

READ_AS_THEY_ARE = [
    Shape("poetry-group-is-an-integer",
          {"pyproject.toml": "[tool.poetry]\nname = 'x'\ngroup = 1\n"
                             "[tool.poetry.dependencies]\npytest = '*'\n"}),
    Shape("poetry-extras-beside-dependencies-of-the-wrong-shape",
          {"pyproject.toml": "[tool.poetry]\nname = 'x'\nextras = {test = ['a']}\n"
                             "dependencies = 3\n", "requirements.txt": "pytest\n"}),
    Shape("pytest-settings-of-the-wrong-shape",
          {"pyproject.toml": "[tool.pytest.ini_options]\naddopts = 3\nmarkers = 3\n"
                             "python_files = 3\nrequired_plugins = 3\n",
           "requirements.txt": "pytest\n"}),
    Shape("setup-cfg-is-binary", {"setup.cfg": b"[metadata]\nname = x\xff\xfe\n"}),
    Shape("setup-cfg-has-duplicate-keys", {"setup.cfg": "[metadata]\nname = x\nname = y\n",
                                           "requirements.txt": "pytest\n"}),
    Shape("setup-cfg-has-bad-interpolation",
          {"setup.cfg": "[metadata]\nname = %(x\n[options.extras_require]\ntest = %(y\n"}),
    Shape("setup-py-nests-too-deep", {"setup.py": "x = " + "-" * 100_000 + "1\n",
                                      "requirements.txt": "pytest\n"}),
    Shape("tox-ini-has-a-weird-section",
          {"tox.ini": "[testenv\ndeps = pytest\n[testenv]\ndeps = {[testenv]deps}\n",
           "requirements.txt": "pytest\n"}),
    Shape("a-requirements-file-includes-itself",
          {"requirements.txt": "-r requirements.txt\npytest\n"}),
    Shape("requirements-files-include-each-other",
          {"requirements.txt": "-r a.txt\npytest\n", "a.txt": "-r requirements.txt\n"}),
    Shape("a-requirements-file-includes-one-outside-the-project",
          {"requirements.txt": "-r ../../etc/passwd\n-r /dev/zero\npytest\n"}),
    Shape("a-requirements-file-includes-a-name-too-long",
          {"requirements.txt": f"-r {LONG_NAME}\npytest\n"}),
    Shape("a-requirements-file-installs-a-folder-named-too-long",
          {"requirements.txt": f"./{LONG_NAME}\npytest\n"}),
    Shape("tox-deps-include-a-name-too-long",
          {"tox.ini": f"[testenv]\ndeps =\n  pytest\n  -r{LONG_NAME}\n"}),
]  # fmt: skip


@pytest.mark.parametrize("shape", REFUSED, ids=lambda shape: shape.name)
def test_a_file_of_the_wrong_shape_fails_the_job_naming_the_file_and_the_key(
    tmp_path: Path, shape: Shape
) -> None:
    result = outcome(tmp_path, shape.files)
    assert isinstance(result, CIError), result
    assert str(result) == shape.error


# -- bounded time: work that grew exponentially, or quadratically, with the file ----------
# Each took hours (a thread of the server busy for good: a job's timeout cannot stop it);
# the timeout only tells a hang from a failure.

QUADRATIC = [
    Shape("requirements-of-blank-lines", {"requirements.txt": "pytest\n" + " \n" * 1_000_000}),
    Shape("a-requirement-of-brackets", {"requirements.txt": "pytest\n./a" + "[" * 2_000_000}),
    Shape("tox-deps-of-unclosed-references",
          {"tox.ini": "[testenv]\ndeps =\n  six\n  " + "{[" * 1_000_000 + "\n"}),
    Shape("a-tox-option-spaced-out",
          {"tox.ini": "[testenv]\ndeps =\n  six\n  -r" + " " * 1_000_000 + "a b\n"}),
    Shape("a-test-module-of-unclosed-definitions",
          {"requirements.txt": "pytest\n", "test_a.py": "def a(" * 170_000}),
    Shape("a-test-module-of-unclosed-usefixtures",
          {"requirements.txt": "pytest\n", "test_a.py": "usefixtures(" * 85_000}),
]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shape", READ_AS_THEY_ARE + QUADRATIC, ids=lambda shape: shape.name)
def test_a_file_of_an_odd_shape_pip_or_its_tool_would_judge_still_gives_a_plan(
    tmp_path: Path, shape: Shape
) -> None:
    result = outcome(tmp_path, shape.files)
    assert isinstance(result, InstallPlan), result


@pytest.mark.timeout(60)
def test_dependency_groups_including_each_other_twice_are_expanded_once(tmp_path: Path) -> None:
    """g0 includes g1 twice, which includes g2 twice, ...: 2^40 requirements if each
    include were expanded again."""
    groups = "".join(
        f"g{n} = [{{include-group = 'g{n + 1}'}}, {{include-group = 'g{n + 1}'}}]\n"
        for n in range(40)
    )
    pyproject = f"[dependency-groups]\ntest = [{{include-group = 'g0'}}]\n{groups}g40 = ['six']\n"
    result = outcome(tmp_path, {"pyproject.toml": pyproject})
    assert isinstance(result, InstallPlan), result
    assert result.dependency_commands[0].endswith(" six")


@pytest.mark.timeout(60)
def test_tox_substitutions_of_substitutions_stop_at_a_bounded_size(tmp_path: Path) -> None:
    """Each value naming the next 200 times, four deep: 1.6 billion copies if all were
    made. Past a bounded size the references are left as they are: tox's to make."""
    sections = "".join(f"[s{n}]\nx = {f'{{[s{n + 1}]x}}' * 200}\n" for n in range(4))
    tox = f"[testenv]\ndeps =\n  six\n  {{[s0]x}}\n{sections}[s4]\nx = pytest\n"
    result = outcome(tmp_path, {"tox.ini": tox})
    assert isinstance(result, InstallPlan), result
    assert any("a substitution only tox can make" in note for note in result.notes)


@pytest.mark.timeout(60)
def test_a_tox_condition_naming_too_many_environments_is_left_out(tmp_path: Path) -> None:
    """`{a,b}-{a,b}-...` forty times: 2^40 environments to look through one by one."""
    condition = "-".join(["{a,b}"] * 40)
    result = outcome(tmp_path, {"tox.ini": f"[testenv]\ndeps =\n  six\n  {condition}: mock\n"})
    assert isinstance(result, InstallPlan), result
    assert any("mock" in note and "more than" in note for note in result.notes), result.notes


# -- generated shapes ----------------------------------------------------------------------

WORDS = [
    "pytest", "six", ".", ".[test]", "-e .", "-r requirements.txt", "-r ../../etc/passwd",
    "../x", "/etc", "test", "dev", "tests", "^1.2", "~1.0", ">=1,<2", "*", "git+https://h/r",
    "{[testenv]deps}", "py38: x", "%(x", "", "x" * 300, "dependencies", "include-group",
]  # fmt: skip
KEYS = ["test", "dev", "include-group", "path", "develop", "git", "version", "optional"]
PYPROJECT_PATHS = [
    ("project",), ("project", "name"), ("project", "dependencies"),
    ("project", "optional-dependencies"), ("project", "optional-dependencies", "test"),
    ("project", "dynamic"), ("build-system",), ("build-system", "requires"),
    ("dependency-groups",), ("dependency-groups", "test"), ("dependency-groups", "dev"),
    ("tool",), ("tool", "poetry"), ("tool", "poetry", "name"),
    ("tool", "poetry", "dependencies"), ("tool", "poetry", "dependencies", "six"),
    ("tool", "poetry", "group"), ("tool", "poetry", "group", "dev"),
    ("tool", "poetry", "group", "dev", "dependencies"), ("tool", "poetry", "dev-dependencies"),
    ("tool", "poetry", "extras"), ("tool", "poetry", "package-mode"), ("tool", "tox"),
    ("tool", "tox", "legacy_tox_ini"), ("tool", "tox", "env_run_base"),
    ("tool", "tox", "env_run_base", "deps"), ("tool", "pytest"),
    ("tool", "pytest", "ini_options"), ("tool", "pytest", "ini_options", "addopts"),
    ("tool", "pytest", "ini_options", "markers"),
    ("tool", "pytest", "ini_options", "python_files"),
    ("tool", "pytest", "ini_options", "required_plugins"),
]  # fmt: skip
INI_LINES = [
    "[testenv]", "[tox:tox]", "[metadata]", "[options]", "[options.extras_require]",
    "[tool:pytest]", "[pytest]", "[testenv", "deps =", "deps = pytest", "  -r requirements.txt",
    "  -r ../../etc/passwd", "  {[testenv]deps}", "  py{38,39}: mock", "  .[test]",
    "extras = test", "test = pytest", "name = x", "name = y", "addopts = --cov -n 2",
    "markers = 3", "%(foo", "= x", "[",
]  # fmt: skip
REQUIREMENT_LINES = [
    "pytest", "-r requirements.txt", "-r a.txt", "-r ../../etc/passwd", "-r /dev/zero",
    "-c a.txt", "-e .", ".[test]", "./libs", "--requirement=requirements-dev.txt",
    f"-r {LONG_NAME}", "git+https://h/r",
]  # fmt: skip
REQUIREMENTS_FILES = ["requirements.txt", "a.txt", "requirements-dev.txt", "requirements/test.txt"]

TEXT = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=20)
LEAVES = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    TEXT,
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), TEXT), inner, max_size=4),
    ),
    max_leaves=12,
)


def toml(value: Any) -> str:
    """A value as TOML (inline tables, arrays): what the strategies make only."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)  # numbers, and strings as basic strings (\uXXXX escapes)


def nested(paths: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """The values set at those paths, later ones replacing what is in their way."""
    document: dict[str, Any] = {}
    for path, value in paths:
        table = document
        for key in path[:-1]:
            if not isinstance(table.get(key), dict):
                table[key] = {}
            table = table[key]
        table[path[-1]] = value
    return document


@st.composite
def projects(draw: st.DrawFn) -> dict[str, str | bytes]:
    files: dict[str, str | bytes] = {}
    paths = draw(st.lists(st.tuples(st.sampled_from(PYPROJECT_PATHS), VALUES), max_size=6))
    if paths:
        files["pyproject.toml"] = "".join(
            f"{json.dumps(key)} = {toml(value)}\n" for key, value in nested(paths).items()
        )
    config = draw(st.dictionaries(st.sampled_from(KNOWN_KEYS), VALUES, max_size=2))
    if config and draw(st.integers(0, 3)) == 0:
        files["ci.toml"] = "".join(
            f"{json.dumps(key)} = {toml(value)}\n" for key, value in config.items()
        )
    for name in draw(st.lists(st.sampled_from(["tox.ini", "setup.cfg", "pytest.ini"]))):
        files[name] = "\n".join(draw(st.lists(st.sampled_from(INI_LINES), max_size=8)))
    for name in draw(st.lists(st.sampled_from(REQUIREMENTS_FILES), max_size=3)):
        files[name] = "\n".join(draw(st.lists(st.sampled_from(REQUIREMENT_LINES), max_size=5)))
    if draw(st.booleans()):  # some bytes that are no UTF-8 in one of them (not TOML's)
        name = draw(st.sampled_from([n for n in sorted(files) if "toml" not in n] or ["setup.cfg"]))
        original = files.get(name, "")
        files[name] = b"\xff\xfe" + (original if isinstance(original, bytes) else original.encode())
    return files


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(files=projects())
def test_any_shape_of_the_projects_files_gives_a_plan_or_a_clear_error(
    files: dict[str, str | bytes],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = outcome(Path(folder), files)
    if isinstance(result, CIError):
        message = str(result)
        names_a_file = any(message.startswith(name) for name in files)
        assert names_a_file or NOTHING_TO_INSTALL in message, message
    else:
        assert all(isinstance(command, str) for command in result.dependency_commands)
