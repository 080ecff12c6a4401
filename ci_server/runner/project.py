"""How a project is installed, decided from its files.

The install is split in two: the dependencies, decided by a few files only (their content
keys a reusable environment, see environments.py), and the project itself, whose code
changes every run (scripts.py says how an environment keeps it installed all the same).
"""

from __future__ import annotations

import ast
import configparser
import posixpath
import re
import shlex
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_server.models import CIError
from ci_server.runner.config import CONFIG_FILE, ProjectConfig

REQUIREMENTS = "requirements.txt"
EXTRA_REQUIREMENTS = (
    "requirements-dev.txt",
    "requirements-test.txt",
    "requirements-tests.txt",
    "requirements_dev.txt",
    "requirements_test.txt",
    "dev-requirements.txt",
    "test-requirements.txt",
)
TEST_EXTRAS = ("test", "tests", "testing", "dev")
DEFAULT_BUILD_REQUIRES = ("setuptools>=64", "wheel")
PIP = "python -m pip install --progress-bar off"


class ProjectError(CIError):
    """The project cannot be run as it is: the user must change it."""


@dataclass(frozen=True, slots=True)
class InstallPlan:
    description: str
    """Said in the job's log: what was found and what will be installed."""
    dependency_commands: tuple[str, ...]
    """Depend only on `key_files` (and ci.toml): reusable from one run to the next."""
    project_commands: tuple[str, ...]
    """Install the project's own code: in its environment when it can be (scripts.py),
    else on every run."""
    key_files: tuple[str, ...]
    """Relative paths whose content keys the environment: files, and folders of local
    packages the requirements install (every file in them counts)."""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProjectError(f"{path.name} is not valid TOML: {e}") from e


def _setup_py_extras(path: Path) -> set[str]:
    """Extras named in a literal `extras_require={...}` of setup.py (it is not executed)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return set()
    extras: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.keyword)
            and node.arg == "extras_require"
            and isinstance(node.value, ast.Dict)
        ):
            extras |= {
                key.value
                for key in node.value.keys
                if isinstance(key, ast.Constant) and isinstance(key.value, str)
            }
    return extras


def _setup_py_name(path: Path) -> str | None:
    """The literal `name="..."` passed to setup() in setup.py, if there is one."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.keyword)
            and node.arg == "name"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


def _group_requirements(groups: dict[str, Any], name: str, seen: frozenset[str]) -> list[str]:
    """The requirements of a PEP 735 dependency group, following `include-group`."""
    if name in seen:
        raise ProjectError(f"pyproject.toml: dependency group {name!r} includes itself")
    entries = groups.get(name)
    if not isinstance(entries, list):
        raise ProjectError(f"pyproject.toml: dependency group {name!r} is not a list")
    requirements: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            requirements.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("include-group"), str):
            requirements += _group_requirements(groups, entry["include-group"], seen | {name})
        else:
            raise ProjectError(f"pyproject.toml: bad entry {entry!r} in group {name!r}")
    return requirements


def _quote_all(items: Sequence[str]) -> str:
    return " ".join(shlex.quote(item) for item in items)


@dataclass(frozen=True, slots=True)
class _Packaging:
    """What the project's packaging files say, each read once."""

    pyproject: dict[str, Any]
    """pyproject.toml's tables; empty without one."""
    files: list[str]
    """The files that describe the project, its dependencies or its build: setup.py; a
    pyproject.toml with [project], [build-system] or [dependency-groups]; a setup.cfg with
    [metadata] or [options]. One holding only tools' settings (pytest's, a linter's) does
    not count: `pip install .` of such a project fails or makes a package nobody meant."""
    built: bool
    """Whether the project itself is installed, not only its dependencies: it has a build
    (setup.py, setuptools metadata in setup.cfg, or a pyproject.toml [build-system]).
    A pyproject.toml without [build-system] is an application, as uv takes it: its
    dependencies are installed, the project is not."""


def _packaging(root: Path) -> _Packaging:
    pyproject_path = root / "pyproject.toml"
    pyproject = _read_toml(pyproject_path) if pyproject_path.is_file() else {}
    files = []
    if {"project", "build-system", "dependency-groups"} & pyproject.keys():
        files.append("pyproject.toml")
    if (root / "setup.py").is_file():
        files.append("setup.py")
    if (root / "setup.cfg").is_file():
        cfg = _setup_cfg(root / "setup.cfg")
        if cfg.has_section("metadata") or cfg.has_section("options"):
            files.append("setup.cfg")
    built = "build-system" in pyproject or "setup.py" in files or "setup.cfg" in files
    return _Packaging(pyproject, files, built)


_INCLUDED_FILE = re.compile(
    r"^\s*(?:-[rc]\s*|--(?:requirement|constraint)(?:\s*=\s*|\s+))(\S+)", re.MULTILINE
)
"""A requirements file's `-r other.txt` or `-c constraints.txt` line: the file it names."""


def _inside(name: str) -> bool:
    """Whether a normalized relative path stays in the project (never read one that does
    not: `-r /dev/zero` would hang the server)."""
    return not (posixpath.isabs(name) or name == ".." or name.startswith("../"))


def _local_folder(line: str) -> str | None:
    """The folder a requirement line installs from, as pip takes it (`./libs/foo`,
    `libs/foo[extra]`: a path, relative to where pip runs, the project root), if it is one.
    Not `-e` lines (jobs see their fresh copy), nor URLs, nor the project itself (`.`)."""
    requirement = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].split(";")[0].strip()
    if not requirement or requirement.startswith("-") or "://" in requirement or "@" in requirement:
        return None
    token = re.sub(r"\[.*\]$", "", requirement.split()[0])
    if not (token.startswith(".") or "/" in token):
        return None
    folder = posixpath.normpath(token)
    return folder if folder != "." else None


def _with_included_files(root: Path, names: Sequence[str]) -> list[str]:
    """The requirements files, every file they include (-r) or constrain with (-c), and the
    project's folders they install as packages: all their content decides the environment.
    What is outside the project or missing is left to pip, which says so."""
    found: list[str] = []
    pending = list(names)
    while pending:
        name = pending.pop(0)
        path = root / name
        if name in found or not _inside(name) or not path.exists():
            continue
        found.append(name)
        if path.is_dir():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for included in _INCLUDED_FILE.findall(text):
            pending.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), included)))
        pending += [folder for line in text.splitlines() if (folder := _local_folder(line))]
    return found


def _plan_requirements(root: Path, packaging: _Packaging) -> InstallPlan:
    files = [REQUIREMENTS, *(f for f in EXTRA_REQUIREMENTS if (root / f).is_file())]
    command = f"{PIP} " + " ".join(f"-r {f}" for f in files)
    project_commands: tuple[str, ...] = ()
    key_files = _with_included_files(root, files)
    if packaging.built:
        # A packaged project: its code is installed too, without dependencies again, and
        # its packaging files decide that install (kept in the environment).
        project_commands = (_project_install(),)
        key_files += packaging.files
    return InstallPlan(" + ".join(files), (command,), project_commands, tuple(key_files))


def _project_install() -> str:
    editable = f"{PIP} --quiet --no-deps --no-build-isolation -e ."
    regular = f"{PIP} --quiet --no-deps --no-build-isolation ."
    return f"{editable} || {regular}"


def _setup_cfg(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error:
        return configparser.ConfigParser(interpolation=None)
    return parser


def _normalized(name: str) -> str:
    """A project name as PEP 503 compares them: `Foo_Bar.baz` is `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (`attrs[tests]>=1; ...`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return _normalized(match.group(1)) if match else ""


def _plan_package(root: Path, packaging: _Packaging) -> InstallPlan:
    """A pyproject.toml / setup.py / setup.cfg project, with its test extra or group."""
    pyproject, built = packaging.pyproject, packaging.built
    project_table: dict[str, Any] = pyproject.get("project", {}) or {}
    optional: dict[str, Any] = project_table.get("optional-dependencies", {}) or {}
    declared = dict.fromkeys(optional, "pyproject.toml")  # each extra: the file declaring it
    name: str | None = project_table.get("name")
    if (root / "setup.cfg").is_file():
        cfg = _setup_cfg(root / "setup.cfg")
        if cfg.has_section("options.extras_require"):
            for cfg_extra in cfg.options("options.extras_require"):
                declared.setdefault(cfg_extra, "setup.cfg")
        name = name or cfg.get("metadata", "name", fallback=None)
    if (root / "setup.py").is_file():
        for py_extra in sorted(_setup_py_extras(root / "setup.py")):
            declared.setdefault(py_extra, "setup.py")
        name = name or _setup_py_name(root / "setup.py")
    groups: dict[str, Any] = pyproject.get("dependency-groups", {}) or {}
    build_requires = pyproject.get("build-system", {}).get("requires", DEFAULT_BUILD_REQUIRES)
    extra = next((e for e in TEST_EXTRAS if e in declared), None)
    group = next((g for g in TEST_EXTRAS if g in groups), None)
    if extra:
        source = declared[extra]
    elif group:
        source = "pyproject.toml"
    else:
        source = packaging.files[0]

    # The build backend stays in the environment: the project's install needs it.
    commands = [f"{PIP} {_quote_all(list(build_requires))}"] if built else []
    requirements = list(project_table.get("dependencies", []))
    requirements += optional.get(extra, []) if extra else []
    # An extra naming the project itself (`tests = ["attrs[tests-no-zope]", ...]`) means
    # more of the project's own extras: listed as they are, pip would fetch the published
    # project instead (another version with other extras, or none for a private project).
    refers_to_itself = name is not None and _normalized(name) in map(
        _requirement_name, requirements
    )
    static = "project" in pyproject and "dependencies" not in project_table.get("dynamic", [])
    if static and (extra is None or extra in optional) and not refers_to_itself:
        if requirements:
            commands.append(f"{PIP} {_quote_all(requirements)}")
    else:
        # Dependencies known only to the build backend, or extras only pip resolves: install
        # the project to get them, then remove it so that each run's own install of the
        # code is the one imported.
        commands.append(f"{PIP} {_quote_all([f'.[{extra}]' if extra else '.'])}")
        if name:
            commands.append(f"python -m pip uninstall --yes --quiet {shlex.quote(name)}")
    chosen = [f"extra [{extra}]"] if extra else []
    if group:
        commands.append(f"{PIP} {_quote_all(_group_requirements(groups, group, frozenset()))}")
        chosen.append(f"dependency group {group!r}")
    description = f"{source}, " + (" + ".join(chosen) if chosen else "no test extra or group")
    if not built:
        description += " (no [build-system]: the project itself is not installed)"
    project_commands = (_project_install(),) if built else ()
    return InstallPlan(description, tuple(commands), project_commands, tuple(packaging.files))


def plan_install(root: Path, config: ProjectConfig) -> InstallPlan:
    packaging = _packaging(root)
    if (root / REQUIREMENTS).is_file():
        plan = _plan_requirements(root, packaging)
    elif packaging.files:
        plan = _plan_package(root, packaging)
    elif config.install:
        plan = InstallPlan(f"{CONFIG_FILE} install commands", (), (), ())
    else:
        raise ProjectError(
            "no requirements.txt in the project root, and no pyproject.toml, setup.py or "
            "setup.cfg that packages the project: nothing says how to install its test "
            "dependencies (add a requirements.txt listing them, `pytest` at least)"
        )
    if config.install:
        plan = InstallPlan(
            plan.description + f" + {CONFIG_FILE} install",
            (*plan.dependency_commands, *config.install),
            plan.project_commands,
            (*plan.key_files, CONFIG_FILE),
        )
    return plan
