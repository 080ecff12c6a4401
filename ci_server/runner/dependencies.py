"""Where a project's dependencies are written, besides its packaging metadata's own tables.

Each reader gives what one place names as `Requirements`: arguments of `pip install`, the
files that decide them (they key the environment), the names listed, and what could not be
taken, in words for the job's log. project.py decides which of them are used:

- requirements files for tests: `requirements-dev.txt`, `requirements-test*.txt`, ... in
  the root, `test.txt`, `testing.txt`, `tests.txt` or `dev.txt` in a `requirements/`
  folder, and that folder's `base.txt`/`requirements.txt` for the project's own;
- Poetry's tables (`[tool.poetry.dependencies]`, groups, the older `dev-dependencies`),
  converted to PEP 508 by poetry-core (caret and tilde constraints, `python` markers);
- tox's `[testenv] deps` and `extras`, from tox.ini, tox.toml, pyproject.toml or setup.cfg.

Nothing here is executed, and no file outside the project is read.
"""

from __future__ import annotations

import configparser
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from poetry.core.factory import Factory

from ci_server.runner.shapes import (
    ProjectError,
    exists,
    plain_strings,
    read_text,
    read_toml,
    table_or_empty,
)

TEST_NAMES = ("test", "tests", "testing", "dev")
"""Names of the extras, groups and files that hold test dependencies, in order of trust."""

ROOT_TEST_REQUIREMENTS = (
    "requirements-dev.txt",
    "requirements_dev.txt",
    "dev-requirements.txt",
    "test-requirements.txt",
)
ROOT_TEST_REQUIREMENTS_GLOBS = ("requirements-test*.txt", "requirements_test*.txt")
REQUIREMENTS_FOLDER = "requirements"
FOLDER_BASE_REQUIREMENTS = ("base.txt", "requirements.txt")
TOX_FILES = ("tox.ini", "setup.cfg", "pyproject.toml", "tox.toml")
"""Where tox looks for its configuration, in its order (setup.cfg with [tox:tox] only)."""


@dataclass(frozen=True, slots=True)
class Requirements:
    """What one place names, ready for pip."""

    label: str
    """Where, for the log: `requirements/test.txt`, `pyproject.toml [tool.poetry.dependencies]`."""
    args: tuple[str, ...] = ()
    """`pip install` arguments: requirements (PEP 508, local paths, `.[extra]`), `-r file`."""
    files: tuple[str, ...] = ()
    """The files and local package folders that decide them: they key the environment."""
    names: frozenset[str] = frozenset()
    """The normalized names of the projects listed."""
    needs_git: tuple[str, ...] = ()
    """Requirements from a git repository: installed only where git is."""
    skipped: tuple[str, ...] = ()
    """What could not be taken, one sentence each."""
    extras: tuple[str, ...] = ()
    """The project's own extras asked for (tox's `extras`, a `.[test]` in its deps)."""
    project: bool = False
    """Only the project's build backend knows them: the project is installed to get them
    (with `extras`), then removed."""
    project_listed: Literal["", "regular", "editable"] = ""
    """How a line installs the project itself (`-e .[test]`), if one does: pip takes the
    project only once, in one form."""

    @property
    def empty(self) -> bool:
        return not (self.args or self.needs_git or self.extras or self.project)


@dataclass(slots=True)
class _Collected:
    """What a reader gathers, line by line, for a `Requirements`."""

    args: list[str] = field(default_factory=list)
    needs_git: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)


def normalized(name: str) -> str:
    """A project name as PEP 503 compares them: `Foo_Bar.baz` is `foo-bar-baz`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The normalized project name of a PEP 508 requirement (`attrs[tests]>=1; ...`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return normalized(match.group(1)) if match else ""


# -- requirements files --------------------------------------------------------------------

_INCLUDED_FILE = re.compile(
    r"^[ \t]*(?:-[rc][ \t]*|--(?:requirement|constraint)(?:[ \t]*=[ \t]*|[ \t]+))(\S+)",
    re.MULTILINE,
)
"""A requirements file's `-r other.txt` or `-c constraints.txt` line: the file it names."""


def inside(name: str) -> bool:
    """Whether a normalized relative path stays in the project (never read one that does
    not: `-r /dev/zero` would hang the server)."""
    return not (posixpath.isabs(name) or name == ".." or name.startswith("../"))


def local_folder(line: str) -> str | None:
    """The folder a requirement line installs from, as pip takes it (`./libs/foo`,
    `libs/foo[extra]`: a path, relative to where pip runs, the project root), if it is one.
    Not `-e` lines (jobs see their fresh copy), nor URLs, nor the project itself (`.`)."""
    requirement = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].split(";")[0].strip()
    if not requirement or requirement.startswith("-") or "://" in requirement or "@" in requirement:
        return None
    token = re.sub(r"\[[^\[]*\]$", "", requirement.split()[0])
    if not (token.startswith(".") or "/" in token):
        return None
    folder = posixpath.normpath(token)
    return folder if folder != "." else None


def with_included_files(root: Path, names: Sequence[str]) -> list[str]:
    """The requirements files, every file they include (-r) or constrain with (-c), and the
    project's folders they install as packages: all their content decides the environment.
    What is outside the project or missing is left to pip, which says so."""
    found: list[str] = []
    pending = list(names)
    while pending:
        name = pending.pop(0)
        path = root / name
        if name in found or not inside(name) or not exists(path):
            continue
        found.append(name)
        if path.is_dir():
            continue
        text = read_text(root, name)
        for included in _INCLUDED_FILE.findall(text):
            pending.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), included)))
        pending += [folder for line in text.splitlines() if (folder := local_folder(line))]
    return found


_PROJECT_ITSELF = re.compile(r"^(-e\s*|--editable[=\s]\s*)?(?:\./?|file:\.)(?:\[[^\]]*\])?$")
"""A requirements line installing the project itself: `.`, `-e .[test]`, `--editable=.`."""


def _lines(root: Path, files: Iterable[str]) -> Iterator[str]:
    """The requirement lines of the files, comments and blank lines aside."""
    for name in files:
        path = root / name
        if path.is_file():
            for line in read_text(root, name).splitlines():
                line = re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip()
                if line:
                    yield line


def _listed_in_files(root: Path, files: Iterable[str]) -> frozenset[str]:
    """The names of the projects the requirements files list (options and paths aside)."""
    names = {
        requirement_name(line)
        for line in _lines(root, files)
        if not line.startswith("-") and local_folder(line) is None
    }
    return frozenset(names - {""})


def _project_listed(root: Path, files: Iterable[str]) -> Literal["", "regular", "editable"]:
    """How the requirements files install the project itself, if they do."""
    found = [match for line in _lines(root, files) if (match := _PROJECT_ITSELF.match(line))]
    if not found:
        return ""
    return "editable" if any(match.group(1) for match in found) else "regular"


def requirements_file(root: Path, name: str) -> Requirements:
    """One requirements file, with the files it includes."""
    files = with_included_files(root, [name])
    return Requirements(
        name,
        ("-r", name),
        tuple(files),
        _listed_in_files(root, files),
        project_listed=_project_listed(root, files),
    )


def requirements_files_for_tests(root: Path) -> tuple[list[str], list[str]]:
    """(used, seen and not used): the requirements files that name test dependencies.

    Every one in the root is used; in the requirements/ folder, the test ones (`test.txt`,
    `testing.txt`, `tests.txt`) or else `dev.txt` (which usually adds linters and docs
    tools to them).
    """
    in_root = [name for name in ROOT_TEST_REQUIREMENTS if (root / name).is_file()]
    for pattern in ROOT_TEST_REQUIREMENTS_GLOBS:
        in_root += sorted(path.name for path in root.glob(pattern) if path.is_file())
    folder = [
        f"{REQUIREMENTS_FOLDER}/{name}.txt"
        for name in TEST_NAMES
        if (root / REQUIREMENTS_FOLDER / f"{name}.txt").is_file()
    ]
    tests = [name for name in folder if not name.endswith("/dev.txt")]
    used = list(dict.fromkeys(in_root)) + (tests or folder)
    return used, [name for name in folder if name not in used]


def folder_base_requirements(root: Path) -> str | None:
    """requirements/base.txt (or requirements/requirements.txt): the project's own."""
    return next(
        (
            f"{REQUIREMENTS_FOLDER}/{name}"
            for name in FOLDER_BASE_REQUIREMENTS
            if (root / REQUIREMENTS_FOLDER / name).is_file()
        ),
        None,
    )


# -- Poetry --------------------------------------------------------------------------------


def _poetry_requirement(name: str, constraint: Any) -> str:
    """One Poetry constraint as a PEP 508 requirement (ValueError if it cannot be one)."""
    try:
        requirement = Factory.create_dependency(name, constraint).to_pep_508()
    except Exception as e:  # poetry-core's parser, on untrusted input: whatever it raises
        raise ValueError(f"{constraint!r} is not a constraint poetry-core reads ({e})") from e
    if "||" in requirement:
        raise ValueError(f"{constraint!r} is a union of versions, which PEP 508 cannot say")
    return requirement


def poetry_requirements(
    root: Path, table: Mapping[str, Any], label: str, *, main: bool = False
) -> Requirements:
    """A Poetry dependency table (`name = constraint`) as pip arguments.

    `python` is the interpreter, not a project. In the main table, optional dependencies
    belong to extras and are left out. A path dependency inside the project is installed
    from that folder (`-e` when `develop = true`), one outside it cannot be.
    """
    collected = _Collected()
    names: set[str] = set()
    for name, value in table.items():
        if normalized(name) == "python":
            continue
        for constraint in value if isinstance(value, list) else [value]:
            if main and isinstance(constraint, dict) and constraint.get("optional"):
                continue
            names.add(normalized(name))
            _add_poetry_constraint(root, name, constraint, label, collected)
    return Requirements(
        label,
        tuple(collected.args),
        ("pyproject.toml", *collected.folders),
        frozenset(names),
        tuple(collected.needs_git),
        tuple(collected.skipped),
    )


def _add_poetry_constraint(
    root: Path, name: str, constraint: Any, label: str, collected: _Collected
) -> None:
    if isinstance(constraint, dict) and isinstance(constraint.get("path"), str):
        folder = posixpath.normpath(constraint["path"])
        if not inside(folder) or not exists(root / folder):
            collected.skipped.append(
                f"{name} from {label} (its path {constraint['path']} is not in the project)"
            )
            return
        path = f"./{folder}"
        collected.args += ["-e", path] if constraint.get("develop") else [path]
        collected.folders.append(folder)
        return
    try:
        requirement = _poetry_requirement(name, constraint)
    except ValueError as e:
        collected.skipped.append(f"{name} from {label} ({e})")
        return
    if isinstance(constraint, dict) and "git" in constraint:
        collected.needs_git.append(requirement)
    else:
        collected.args.append(requirement)


def tool_table(pyproject: Mapping[str, Any], name: str) -> dict[str, Any]:
    """pyproject.toml's `[tool.<name>]`; empty when there is none, or it is no table."""
    return table_or_empty(table_or_empty(pyproject, "tool"), name)


def poetry_table(pyproject: Mapping[str, Any]) -> dict[str, Any]:
    return tool_table(pyproject, "poetry")


def poetry_test_tables(
    pyproject: Mapping[str, Any],
) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """(used, seen and not used): Poetry's test dependency tables as (how the Project line
    names it, label, table).

    Used: the groups named test, tests, testing or dev, and the older `dev-dependencies`.
    The other groups (docs, lint, ...) are seen and not used.
    """
    poetry = poetry_table(pyproject)
    groups = table_or_empty(poetry, "group")

    def label(group: str) -> str:
        return f"pyproject.toml [tool.poetry.group.{group}.dependencies]"

    tables = {g: c.get("dependencies") for g, c in groups.items() if isinstance(c, dict)}
    tests = [g for g in TEST_NAMES if isinstance(tables.get(g), dict)]
    used = [(f"poetry group {group!r}", label(group), tables[group]) for group in tests]
    seen = [label(group) for group in groups if group not in tests]
    if isinstance(poetry.get("dev-dependencies"), dict):
        legacy = "pyproject.toml [tool.poetry.dev-dependencies]"
        used.append(("poetry dev-dependencies", legacy, poetry["dev-dependencies"]))
    return used, seen


# -- tox -----------------------------------------------------------------------------------

_FACTOR_LINE = re.compile(r"^([\w{}.!,-]+):\s+(.+)$")
"""tox's conditional line, `py38,py39: mock` or `!coverage: x` (its own pattern)."""
_PYTHON_FACTOR = re.compile(r"^py(?:3(?:\.?(\d+))?)?$")
"""`py`, `py3`, `py311` or `py3.11`: a CPython factor, with its minor version if named."""
_REFERENCE = re.compile(r"\{\[([^\][{}\n]+)\]([^{}\n]+)\}")
"""`{[base]deps}`: another section's value, substituted."""
MAX_SUBSTITUTED = 1024**2
"""The most characters substitutions may add to a value: `{[a]x}` naming `{[b]x}` 200
times, naming `{[c]x}` 200 times, ... would make billions."""
MAX_CONDITION_CHARS = 256
MAX_CONDITION_ENVIRONMENTS = 1000
"""A tox line's condition that is longer, or names more environments (`{a,b}-{a,b}-...`),
is left out: looking through them all could take forever."""


@dataclass(frozen=True, slots=True)
class ToxEnvironment:
    """The `deps` and `extras` of tox's base environment, and the file they come from."""

    file: str
    label: str
    deps: list[str]
    extras: list[str]


def tox_environment(root: Path, pyproject: Mapping[str, Any]) -> ToxEnvironment | None:
    """The base test environment of the project's tox configuration, if it has one, from
    the first file tox would read."""
    for name in TOX_FILES:
        path = root / name
        if not path.is_file():
            continue
        if name in ("tox.ini", "setup.cfg"):
            parser = _read_ini(read_text(root, name))
            if name == "setup.cfg" and (parser is None or not parser.has_section("tox:tox")):
                continue
            return None if parser is None else _parsed_environment(parser, name, name)
        tox = tool_table(pyproject, "tox") if name == "pyproject.toml" else _read_tox_toml(root)
        if isinstance(tox.get("legacy_tox_ini"), str):
            parser = _read_ini(tox["legacy_tox_ini"])
            where = "pyproject.toml [tool.tox] legacy_tox_ini"
            return None if parser is None else _parsed_environment(parser, name, where)
        if tox:
            base = table_or_empty(tox, "env_run_base")
            where = "[tool.tox.env_run_base]" if name == "pyproject.toml" else "[env_run_base]"
            deps, extras = plain_strings(base.get("deps")), plain_strings(base.get("extras"))
            return ToxEnvironment(name, f"{name} {where}", deps, extras)
    return None


def _read_tox_toml(root: Path) -> dict[str, Any]:
    """tox.toml's tables; none when it is not valid (tox would say so, not this). Of its
    native settings, only plain strings are read (its `{replace = ...}` tables aside)."""
    try:
        return read_toml(root, "tox.toml")
    except ProjectError:
        return {}


def _read_ini(text: str) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return None
    return parser


def _parsed_environment(
    parser: configparser.ConfigParser, name: str, where: str
) -> ToxEnvironment | None:
    """The [testenv] section of a tox configuration in ini form, read from `where`."""
    section = "testenv"
    if not parser.has_section(section):
        return None

    def value(key: str) -> list[str]:
        text = _substituted(parser, parser.get(section, key, fallback=""))
        lines = (re.split(r"(?:^|\s)#", line, maxsplit=1)[0].strip() for line in text.splitlines())
        return [line for line in lines if line]

    extras = [extra for line in value("extras") for extra in re.split(r"[\s,]+", line) if extra]
    return ToxEnvironment(name, f"{where} [{section}]", value("deps"), extras)


def _substituted(parser: configparser.ConfigParser, text: str) -> str:
    """`{[section]key}` replaced by that value (references of references, a few deep),
    until they have added MAX_SUBSTITUTED characters: the rest are left as they are."""
    budget = MAX_SUBSTITUTED

    def substituted(text: str, depth: int) -> str:
        def replace(match: re.Match[str]) -> str:
            nonlocal budget
            section, key = match.group(1), match.group(2).strip()
            value = parser.get(section, key, fallback="")
            if len(value) >= budget:
                return match.group(0)
            budget -= len(value) + 1
            return substituted(value, depth + 1)

        return text if depth > 5 else _REFERENCE.sub(replace, text)

    return substituted(text, 0)


def _expanded(condition: str) -> Iterator[str]:
    """tox's braces: `py{38,39}-django` is `py38-django` and `py39-django`."""
    match = re.search(r"\{([^{}]*)\}", condition)
    if match is None:
        yield condition
        return
    for choice in match.group(1).split(","):
        yield from _expanded(condition[: match.start()] + choice.strip() + condition[match.end() :])


def _factors_marker(factors: str) -> list[str] | None:
    """The markers under which all of `py311-!coverage` hold in a plain `py3XX` tox
    environment (one without other factors); None if they never do."""
    markers: list[str] = []
    for factor in factors.split("-"):
        negated = factor.startswith("!")
        python = _PYTHON_FACTOR.match(factor.lstrip("!"))
        if python is None:
            if not negated:
                return None  # coverage, django42, py27, pypy3: not in that environment
        elif python.group(1):
            markers.append(f'python_version {"!=" if negated else "=="} "3.{python.group(1)}"')
        elif negated:
            return None  # !py3
    return markers


def _python_marker(condition: str) -> str | None:
    """The PEP 508 marker for a tox line's condition (`py38,py39`): "" for always, None
    for never in a plain `py3XX` environment. ValueError if it is too big to look through."""
    if len(condition) > MAX_CONDITION_CHARS:
        raise ValueError(f"a condition longer than {MAX_CONDITION_CHARS} characters")
    environments = list(islice(_expanded(condition), MAX_CONDITION_ENVIRONMENTS + 1))
    if len(environments) > MAX_CONDITION_ENVIRONMENTS:
        raise ValueError(f"a condition naming more than {MAX_CONDITION_ENVIRONMENTS} environments")
    alternatives: list[str] = []
    for expanded in environments:
        for factors in expanded.split(","):
            markers = _factors_marker(factors)
            if markers == []:
                return ""
            if markers is not None:
                alternatives.append(" and ".join(markers))
    if not alternatives:
        return None
    if len(alternatives) == 1:
        return alternatives[0]
    return " or ".join(f"({marker})" for marker in dict.fromkeys(alternatives))


def _with_marker(requirement: str, marker: str) -> str:
    if not marker:
        return requirement
    if ";" in requirement:
        base, own = requirement.split(";", 1)
        return f"{base.rstrip()} ; ({own.strip()}) and ({marker})"
    return f"{requirement} ; {marker}"


_OPTION = re.compile(r"^(-[rce]|--requirement|--constraint|--editable)\s*(?:=\s*)?(\S+)$")
_OWN_EXTRAS = re.compile(r"^(?:(?:-e|--editable)\s*)?\.(?:\[([^\]]*)\])?$")
"""The project itself in tox's deps: `.`, `.[test,docs]`, `-e .[test]`."""


@dataclass(slots=True)
class _ToxCollected(_Collected):
    included: list[str] = field(default_factory=list)
    """Files and folders the lines name (-r, -c, ./libs/foo): they key the environment."""
    extras: list[str] = field(default_factory=list)


def tox_requirements(root: Path, environment: ToxEnvironment) -> Requirements:
    """tox's base environment as pip arguments: `{toxinidir}` is the project root, `-r`
    files are read by pip, a line for a factor that a plain `py3XX` environment lacks is
    left out (a Python version factor becomes a marker), and `.[test]` is an extra."""
    collected = _ToxCollected(extras=list(environment.extras))
    for line in environment.deps:
        where = f"{line} from {environment.label} deps"
        factor = _FACTOR_LINE.match(line)
        marker = ""
        if factor:
            try:
                found = _python_marker(factor.group(1))
            except ValueError as e:
                collected.skipped.append(f"{where} ({e})")
                continue
            if found is None:
                condition = factor.group(1)
                collected.skipped.append(f"{where} (for tox's {condition} environments only)")
                continue
            marker, line = found, factor.group(2).strip()
        line = re.sub(r"\{(?:toxinidir|tox_root)\}", ".", line)
        line = re.sub(r"\{env:[^:}]+:([^}]*)\}", r"\1", line)
        if "{" in line:
            collected.skipped.append(f"{where} (a substitution only tox can make)")
            continue
        _add_tox_line(line, marker, where, collected)
    included = with_included_files(root, collected.included)
    names = {requirement_name(arg) for arg in collected.args if not arg.startswith(("-", "."))}
    return Requirements(
        f"{environment.label} deps",
        tuple(collected.args),
        (environment.file, *included),
        _listed_in_files(root, included) | frozenset(names - {""}),
        tuple(collected.needs_git),
        tuple(collected.skipped),
        tuple(dict.fromkeys(collected.extras)),
    )


def _add_tox_line(line: str, marker: str, where: str, collected: _ToxCollected) -> None:
    own = _OWN_EXTRAS.match(line)
    option = _OPTION.match(line)
    if own:
        # The project itself: installed as every project is, with the extras it names.
        collected.extras += [e.strip() for e in (own.group(1) or "").split(",") if e.strip()]
    elif option:
        flag, target = option.group(1), posixpath.normpath(option.group(2))
        if marker or not inside(target):
            reason = "only for some Python versions" if marker else "outside the project"
            collected.skipped.append(f"{where} ({reason})")
            return
        editable = flag in ("-e", "--editable")
        collected.args += [flag, f"./{target}" if editable else target]
        if not editable:
            collected.included.append(target)
    elif line.startswith("-"):
        collected.skipped.append(f"{where} (a pip option, not a requirement)")
    elif line.startswith("git+") or "@ git+" in line:
        collected.needs_git.append(_with_marker(line, marker))
    else:
        collected.args.append(_with_marker(line, marker))
        if folder := local_folder(line):
            collected.included.append(folder)
