"""How a project is installed, decided from its files.

The install is split in two: the dependencies, decided by a few files only (their content
keys a reusable environment, see environments.py), and the project itself, whose code
changes every run (scripts.py says how an environment keeps it installed all the same).

The dependencies are the project's own (requirements.txt, else its packaging metadata, else
requirements/base.txt) and its tests', read from the first place of these that names any, in
this order of trust: the packaging metadata's test extra or group (PEP 621, PEP 735, Poetry),
requirements files for tests, tox's base environment (dependencies.py reads them). The pytest
plugins its configuration needs come on top (plugins.py). The job's log says which files
were used, and which were seen and not.
"""

from __future__ import annotations

import ast
import configparser
import inspect
import shlex
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ci_server.runner import backend_requires, dependencies
from ci_server.runner.config import CONFIG_FILE, ProjectConfig
from ci_server.runner.dependencies import TEST_NAMES, Requirements, normalized, requirement_name
from ci_server.runner.plugins import needed_plugins
from ci_server.runner.shapes import ProjectError, Table, read_text, read_toml, table_or_empty

REQUIREMENTS = "requirements.txt"
DEFAULT_BUILD_REQUIRES = ("setuptools>=64", "wheel")
PIP = "python -m pip install --progress-bar off"
EDITABLE_INSTALL = f"{PIP} --quiet --no-deps --no-build-isolation -e ."
REGULAR_INSTALL = f"{PIP} --quiet --no-deps --no-build-isolation ."
MAX_GROUP_DEPTH = 100
"""The deepest chain of dependency groups including each other that is followed."""


@dataclass(frozen=True, slots=True)
class InstallPlan:
    description: str
    """Said in the job's log: what was found and what will be installed."""
    dependency_commands: tuple[str, ...]
    """Depend only on `key_files` (and ci.toml): reusable from one run to the next."""
    project_commands: tuple[str, ...]
    """Install the project's own code, after `build_commands`: in its environment when it
    can be (scripts.py), else on every run."""
    key_files: tuple[str, ...]
    """Relative paths whose content keys the environment: files, and folders of local
    packages the requirements install (every file in them counts)."""
    notes: tuple[str, ...] = ()
    """Said in the job's log, one line each: the files used, those seen and not used,
    what could not be installed, the pytest plugins added."""
    build_commands: tuple[str, ...] = ()
    """What installing the project needs first: its build backend (`[build-system]
    requires`) and what the backend asks for besides (hatchling's `editables`). They stay
    in the environment: the project's install runs without build isolation, so that a job
    that installs it on every run needs no network for it."""


def _setup_py(root: Path) -> ast.Module | None:
    """setup.py's syntax tree (it is never executed); None if Python cannot parse it."""
    try:
        return ast.parse(read_text(root, "setup.py"))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None  # MemoryError: the parser's own stack, on a million nested operators


def _setup_py_extras(tree: ast.Module) -> dict[str, frozenset[str]]:
    """Extras named in a literal `extras_require={...}` of setup.py, each with the names of
    the projects it lists literally."""
    extras: dict[str, frozenset[str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.keyword)
            and node.arg == "extras_require"
            and isinstance(node.value, ast.Dict)
        ):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    items = value.elts if isinstance(value, ast.List | ast.Tuple) else []
                    extras[key.value] = frozenset(
                        requirement_name(item.value)
                        for item in items
                        if isinstance(item, ast.Constant) and isinstance(item.value, str)
                    )
    return extras


def _setup_py_name(tree: ast.Module) -> str | None:
    """The literal `name="..."` passed to setup() in setup.py, if there is one."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.keyword)
            and node.arg == "name"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


def packaging_name(root: Path) -> str | None:
    """The name the packaging metadata gives the project: pyproject.toml's [project] name,
    else setup.cfg's [metadata] name, else a literal `setup(name=...)` in setup.py.
    ProjectError if pyproject.toml cannot be read or its name is no string."""
    packaging = _packaging(root)
    name = packaging.project.string("name")
    if name is None and packaging.setup_cfg is not None:
        name = packaging.setup_cfg.get("metadata", "name", fallback=None)
    if name is None and packaging.setup_py is not None:
        name = _setup_py_name(packaging.setup_py)
    return name


def _group_requirements(groups: Table, name: str) -> list[str]:
    """The requirements of a PEP 735 dependency group, following `include-group`: each
    group is expanded once and each requirement listed once (groups including another
    twice, each of those another twice, ... would otherwise list 2^depth of them)."""
    expanded: dict[str, list[str]] = {}

    def expand(group: str, path: tuple[str, ...]) -> list[str]:
        if group in path:
            through = ", ".join(path[path.index(group) + 1 :])
            cycle = f" (through {through})" if through else ""
            raise ProjectError(f"pyproject.toml: {groups.where(group)} includes itself{cycle}")
        if len(path) > MAX_GROUP_DEPTH:
            raise ProjectError(
                f"pyproject.toml: {groups.where(name)} includes groups more than "
                f"{MAX_GROUP_DEPTH} deep"
            )
        if group in expanded:
            return expanded[group]
        entries = groups.array(group)
        if entries is None:
            raise ProjectError(
                f"pyproject.toml: {groups.where(path[-1])} includes {group}, which is no group"
            )
        requirements: list[str] = []
        for entry in entries:
            if isinstance(entry, str):
                requirements.append(entry)
            elif isinstance(entry, dict) and isinstance(entry.get("include-group"), str):
                requirements += expand(entry["include-group"], (*path, group))
            else:
                raise ProjectError(
                    f"pyproject.toml: {groups.where(group)} holds {entry!r}, neither a requirement "
                    "nor an {include-group = ...} table"
                )
        expanded[group] = list(dict.fromkeys(requirements))
        return expanded[group]

    return expand(name, ())


def _quote_all(items: Sequence[str]) -> str:
    return " ".join(shlex.quote(item) for item in items)


@dataclass(frozen=True, slots=True)
class _Packaging:
    """What the project's packaging files say, each read once."""

    pyproject: dict[str, Any]
    """pyproject.toml's tables; empty without one."""
    project: Table
    """Its standard tables, each checked to be a table (pip refuses a project otherwise):
    [project], [build-system], [dependency-groups]; empty when absent."""
    build_system: Table
    groups: Table
    files: list[str]
    """The files that describe the project, its dependencies or its build: setup.py; a
    pyproject.toml with [project], [build-system] or [dependency-groups]; a setup.cfg with
    [metadata] or [options]. One holding only tools' settings (pytest's, a linter's) does
    not count: `pip install .` of such a project fails or makes a package nobody meant."""
    setup_cfg: configparser.ConfigParser | None
    """setup.cfg when it describes the project (it is in `files`)."""
    setup_py: ast.Module | None
    """setup.py's syntax tree when it has one Python can parse."""
    built: bool
    """Whether the project itself is installed, not only its dependencies: it has a build
    (setup.py, setuptools metadata in setup.cfg, or a pyproject.toml [build-system]).
    A pyproject.toml without [build-system] is an application, as uv takes it (and a Poetry
    project with `package-mode = false`): its dependencies are installed, the project is
    not."""


def _packaging(root: Path) -> _Packaging:
    pyproject = read_toml(root, "pyproject.toml") if (root / "pyproject.toml").is_file() else {}
    top = Table(pyproject, "pyproject.toml")
    project, build_system = top.table("project"), top.table("build-system")
    groups = top.table("dependency-groups")
    files = []
    poetry = dependencies.poetry_table(pyproject)
    if {"project", "build-system", "dependency-groups"} & pyproject.keys() or poetry:
        files.append("pyproject.toml")
    setup_py = None
    if (root / "setup.py").is_file():
        files.append("setup.py")
        setup_py = _setup_py(root)
    setup_cfg = _setup_cfg(root) if (root / "setup.cfg").is_file() else None
    if setup_cfg is not None and (
        setup_cfg.has_section("metadata") or setup_cfg.has_section("options")
    ):
        files.append("setup.cfg")
    else:
        setup_cfg = None
    built = "build-system" in pyproject or "setup.py" in files or "setup.cfg" in files
    built = built and poetry.get("package-mode", True) is not False
    return _Packaging(pyproject, project, build_system, groups, files, setup_cfg, setup_py, built)


def _project_install() -> str:
    return f"{EDITABLE_INSTALL} || {REGULAR_INSTALL}"


def _build_commands(packaging: _Packaging) -> tuple[str, ...]:
    """Install the project's build backend, then ask it what else it needs to build the
    project (backend_requires.py) and install that too."""
    requires = packaging.build_system.strings("requires")
    requires = DEFAULT_BUILD_REQUIRES if requires is None else requires
    ask = f"python -I -c {shlex.quote(inspect.getsource(backend_requires))}"
    return (
        *([f"{PIP} --quiet {_quote_all(requires)}"] if requires else []),
        f'asked=$(mktemp) && {ask} > "$asked" '
        f'&& {{ [ ! -s "$asked" ] || {PIP} --quiet -r "$asked"; }} && rm -f "$asked"',
    )


def _setup_cfg(root: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(read_text(root, "setup.cfg"))
    except configparser.Error:
        return configparser.ConfigParser(interpolation=None)
    return parser


def _static(packaging: _Packaging, field: str) -> bool:
    """Whether [project] lists `field` itself (it is not in `dynamic`)."""
    return field not in (packaging.project.strings("dynamic") or [])


# -- what the packaging files declare ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Metadata:
    """What the packaging files declare about the dependencies."""

    name: str | None
    """The project's name, when a file says it literally."""
    dependencies: Requirements
    """The project's own."""
    tests: list[tuple[str, Requirements]]
    """Its test extra, dependency group and Poetry test groups, each with how the Project
    line names it."""
    not_used: list[tuple[str, str]]
    """(label, why): the other test-named extras and groups, Poetry's other groups."""
    source: str
    """The file the Project line names: the one declaring the test extra, else the first."""


def _declared_extras(root: Path, packaging: _Packaging) -> dict[str, tuple[str, Requirements]]:
    """Each extra the packaging files declare: the file declaring it, and its requirements
    (listed when they are known without the build backend, else asked of the project)."""
    pyproject = packaging.pyproject
    optional = packaging.project.table("optional-dependencies")
    static = _static(packaging, "optional-dependencies")
    declared: dict[str, tuple[str, Requirements]] = {}
    for extra in optional:
        listed = optional.strings(extra) or []
        label, names = f"pyproject.toml extra [{extra}]", frozenset(map(requirement_name, listed))
        requirements = (
            Requirements(label, tuple(listed), ("pyproject.toml",), names)
            if static
            else Requirements(label, (), ("pyproject.toml",), names, extras=(extra,))
        )
        declared[extra] = ("pyproject.toml", requirements)
    poetry = dependencies.poetry_table(pyproject)
    if "project" not in pyproject and isinstance(poetry.get("extras"), dict):
        main = table_or_empty(poetry, "dependencies")
        for extra, members in poetry["extras"].items():
            members = members if isinstance(members, list) else []
            wanted = {normalized(member) for member in members if isinstance(member, str)}
            table = {name: value for name, value in main.items() if normalized(name) in wanted}
            label = f"pyproject.toml [tool.poetry.extras] {extra}"
            requirements = dependencies.poetry_requirements(root, table, label)
            declared[extra] = ("pyproject.toml", requirements)
    cfg = packaging.setup_cfg
    if cfg is not None and cfg.has_section("options.extras_require"):
        for extra in cfg.options("options.extras_require"):
            lines = cfg.get("options.extras_require", extra).splitlines()
            names = frozenset(requirement_name(line) for line in lines if line.strip())
            label = f"setup.cfg extra [{extra}]"
            requirements = Requirements(label, (), ("setup.cfg",), names, extras=(extra,))
            declared.setdefault(extra, ("setup.cfg", requirements))
    if packaging.setup_py is not None:
        for extra, names in sorted(_setup_py_extras(packaging.setup_py).items()):
            label = f"setup.py extra [{extra}]"
            requirements = Requirements(label, (), ("setup.py",), names, extras=(extra,))
            declared.setdefault(extra, ("setup.py", requirements))
    return declared


def _project_name(packaging: _Packaging) -> str | None:
    pyproject = packaging.pyproject
    name = packaging.project.string("name")
    if name is None and "project" not in pyproject:
        name = dependencies.poetry_table(pyproject).get("name")
    if name is None and packaging.setup_cfg is not None:
        name = packaging.setup_cfg.get("metadata", "name", fallback=None)
    if name is None and packaging.setup_py is not None:
        name = _setup_py_name(packaging.setup_py)
    return name if isinstance(name, str) else None


def _own_dependencies(root: Path, packaging: _Packaging) -> Requirements:
    pyproject = packaging.pyproject
    poetry = dependencies.poetry_table(pyproject)
    if "project" in pyproject and _static(packaging, "dependencies"):
        listed = packaging.project.strings("dependencies") or []
        names = frozenset(map(requirement_name, listed))
        return Requirements("pyproject.toml [project]", tuple(listed), (), names)
    if "project" not in pyproject and poetry:
        table = poetry.get("dependencies", {})
        label = "pyproject.toml [tool.poetry.dependencies]"
        return dependencies.poetry_requirements(
            root, table if isinstance(table, dict) else {}, label, main=True
        )
    return _known_to_the_build_backend(packaging)


def _known_to_the_build_backend(packaging: _Packaging) -> Requirements:
    label = f"{' + '.join(packaging.files)}, as the build backend reads them"
    return Requirements(label, project=True)


def _metadata(root: Path, packaging: _Packaging) -> _Metadata:
    """The packaging files' dependencies: the project's own, and its tests' from the first
    test extra (PEP 621, setup.cfg, setup.py, Poetry's extras), the first test dependency
    group (PEP 735) and Poetry's test groups."""
    pyproject = packaging.pyproject
    name = _project_name(packaging)
    own = _own_dependencies(root, packaging)
    declared = _declared_extras(root, packaging)
    groups = packaging.groups
    # The first test extra and group that name anything, else the first there is.
    extras = [e for e in TEST_NAMES if e in declared]
    extra = next((e for e in extras if not declared[e][1].empty), next(iter(extras), None))
    group = next((g for g in TEST_NAMES if groups.array(g)), None) or next(
        (g for g in TEST_NAMES if g in groups), None
    )
    tests: list[tuple[str, Requirements]] = []
    if extra:
        requirements = declared[extra][1]
        # An extra naming the project itself (`tests = ["attrs[tests-no-zope]", ...]`)
        # means more of the project's own extras: listed as they are, pip would fetch the
        # published project instead (another version with other extras, or none for a
        # private project). Only the project's own install resolves them.
        if name is not None and normalized(name) in own.names | requirements.names:
            own = _known_to_the_build_backend(packaging)
            requirements = replace(requirements, args=(), extras=(extra,))
        tests.append((f"extra [{extra}]", requirements))
    if group:
        listed = _group_requirements(groups, group)
        label = f"pyproject.toml dependency group {group!r}"
        names = frozenset(map(requirement_name, listed))
        requirements = Requirements(label, tuple(listed), ("pyproject.toml",), names)
        tests.append((f"dependency group {group!r}", requirements))
    poetry_used, poetry_seen = dependencies.poetry_test_tables(pyproject)
    for summary, label, table in poetry_used:
        tests.append((summary, dependencies.poetry_requirements(root, table, label)))
    chosen = tests[0][1].label if tests else ""
    not_used = [
        *((declared[e][1].label, f"{chosen} comes first") for e in TEST_NAMES if e in declared),
        *(
            (f"pyproject.toml dependency group {g!r}", f"{chosen} comes first")
            for g in TEST_NAMES
            if g in groups
        ),
        *((label, "not a test group") for label in poetry_seen),
    ]
    used = {requirements.label for _, requirements in tests}
    source = declared[extra][0] if extra else "pyproject.toml" if tests else packaging.files[0]
    return _Metadata(name, own, tests, [item for item in not_used if item[0] not in used], source)


# -- the plan ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Choice:
    """The dependencies chosen, and what was seen and not used."""

    own: list[Requirements] = field(default_factory=list)
    tests: list[tuple[str, Requirements]] = field(default_factory=list)
    not_used: list[tuple[str, str]] = field(default_factory=list)


def _tiers(root: Path, packaging: _Packaging, metadata: _Metadata | None) -> _Choice:
    """The test dependencies from the first place that names any, in order of trust:
    the packaging metadata, requirements files for tests, tox's base environment."""
    files, seen_files = dependencies.requirements_files_for_tests(root)
    from_files = [(name, dependencies.requirements_file(root, name)) for name in files]
    tox: list[tuple[str, Requirements]] = []
    environment = dependencies.tox_environment(root, packaging.pyproject)
    if environment is not None and (environment.deps or environment.extras):
        requirements = dependencies.tox_requirements(root, environment)
        tox.append((requirements.label, requirements))
    tiers = [metadata.tests if metadata else [], from_files, tox]
    chosen = next((tier for tier in tiers if any(not r.empty for _, r in tier)), [])
    why = f"the test dependencies come from {chosen[0][1].label}" if chosen else "empty"
    choice = _Choice(tests=chosen, not_used=list(metadata.not_used) if metadata else [])
    choice.not_used += [(name, f"{files[0]} comes first") for name in seen_files]
    for tier in tiers:
        if tier is not chosen:
            choice.not_used += [(r.label, why) for _, r in tier]
    return choice


def _choose(root: Path, packaging: _Packaging, metadata: _Metadata | None) -> _Choice:
    choice = _tiers(root, packaging, metadata)
    base = dependencies.folder_base_requirements(root)
    included = {name for _, r in choice.tests for name in r.files}
    if (root / REQUIREMENTS).is_file():
        choice.own = [dependencies.requirements_file(root, REQUIREMENTS)]
    elif metadata is not None:
        choice.own = [metadata.dependencies]
    elif base is not None and base not in included:
        choice.own = [dependencies.requirements_file(root, base)]
    if base is not None and base not in included and not any(r.label == base for r in choice.own):
        label = choice.own[0].label if choice.own else ""
        choice.not_used.append((base, f"the project's dependencies come from {label}"))
    return choice


def _pip_units(args: Sequence[str]) -> list[tuple[str, ...]]:
    """pip's arguments as units: `-r file` is one, a requirement another."""
    units: list[tuple[str, ...]] = []
    pending = list(args)
    while pending:
        arg = pending.pop(0)
        takes_value = arg in ("-r", "-c", "-e", "--requirement", "--constraint", "--editable")
        units.append((arg, pending.pop(0)) if takes_value and pending else (arg,))
    return units


def _dependency_commands(
    used: Sequence[Requirements], packaging: _Packaging, metadata: _Metadata | None
) -> tuple[list[str], list[str]]:
    """(commands, notes): one pip command for all the dependencies (one resolution), the
    project removed again if it was installed for them, git requirements where git is."""
    units = list(dict.fromkeys(unit for r in used for unit in _pip_units(r.args)))
    notes: list[str] = []
    extras = list(dict.fromkeys(extra for r in used for extra in r.extras))
    project = any(r.project or r.extras for r in used)
    if project and not packaging.files:
        wanted = ", ".join(f"[{extra}]" for extra in extras)
        notes.append(f"Not installed: the project's extras {wanted} (it is not packaged)")
        project = False
    # A requirements file may install the project itself (`-e .[test]`): then it stays
    # installed, and any extras asked here are asked in the same form (pip refuses `.[x]`
    # beside `-e .`).
    listed = {r.project_listed for r in used} - {""}
    if project and (extras or not listed):
        itself = f".[{','.join(extras)}]" if extras else "."
        units.insert(0, ("-e", itself) if "editable" in listed else (itself,))
    commands = [f"{PIP} {_quote_all([arg for unit in units for arg in unit])}"] if units else []
    if project and not listed and metadata is not None and metadata.name:
        commands.append(f"python -m pip uninstall --yes --quiet {shlex.quote(metadata.name)}")
    git = list(dict.fromkeys(requirement for r in used for requirement in r.needs_git))
    if git:
        skipped = f"==> Not installed (no git in the image): {' '.join(git)}"
        commands.append(
            f"if command -v git >/dev/null; then {PIP} {_quote_all(git)}; "
            f"else echo {shlex.quote(skipped)}; fi"
        )
        notes.append(f"From git, installed if the image has git: {', '.join(git)}")
    return commands, notes


def _plugin_command(plugins: Sequence[str]) -> str:
    """Install pytest plugins without moving what is installed (pytest's version above
    all): a plugin's release that fits it is chosen."""
    installed = "/tmp/ci-installed.txt"
    return (
        f"python -m pip list --format=freeze > {installed} && "
        f"{PIP} -c {installed} {_quote_all(plugins)}"
    )


def _used_notes(choice: _Choice, packaging: _Packaging) -> list[str]:
    def also(requirements: Requirements) -> str:
        where = requirements.label.split(" ")[0]
        more = [f for f in requirements.files if f != where and f not in packaging.files]
        return f", with {', '.join(more)}" if more else ""

    notes = [f"Dependencies from {r.label}{also(r)}" for r in choice.own]
    notes += [f"Test dependencies from {r.label}{also(r)}" for _, r in choice.tests]
    notes += [f"Not used: {label} ({why})" for label, why in choice.not_used]
    return notes


def _description(choice: _Choice, packaging: _Packaging, metadata: _Metadata | None) -> str:
    """The Project line: where the dependencies come from, in a few words. `metadata` when
    the project's own come from its packaging files."""
    summaries = [summary for summary, _ in choice.tests]
    if metadata is None:
        return " + ".join([r.label for r in choice.own] + summaries)
    description = f"{metadata.source}, " + (" + ".join(summaries) or "no test extra or group")
    if not packaging.built:
        description += " (no [build-system]: the project itself is not installed)"
    return description


def plan_install(
    root: Path,
    config: ProjectConfig,
    command_line: Sequence[str] = (),
    paths: Collection[str] | None = None,
) -> InstallPlan:
    """What to install for the project at `root`; `command_line`: the job's own pytest
    arguments (`ci submit test -- ...`), whose options may need a plugin too; `paths`: the
    project's files if known (relative, `/`-separated: a manifest's), not listed again."""
    packaging = _packaging(root)
    metadata = _metadata(root, packaging) if packaging.files else None
    choice = _choose(root, packaging, metadata)
    if not (choice.own or choice.tests or config.install):
        raise ProjectError(
            "no requirements.txt in the project root, no pyproject.toml, setup.py or "
            "setup.cfg that packages the project, no requirements files for tests, no tox "
            "deps: nothing says how to install its test dependencies (add a "
            "requirements.txt listing them, `pytest` at least)"
        )
    used = [*choice.own, *(r for _, r in choice.tests)]
    from_metadata = metadata is not None and choice.own == [metadata.dependencies]
    commands, notes = _dependency_commands(used, packaging, metadata)
    notes = _used_notes(choice, packaging) + notes
    notes += [f"Not installed: {skipped}" for r in used for skipped in r.skipped]
    listed = frozenset().union(*(r.names for r in used))
    plugins = needed_plugins(root, packaging.pyproject, config, listed, command_line, paths)
    if plugins:
        commands.append(_plugin_command([plugin.requirement for plugin in plugins]))
        notes += [f"Adding pytest plugin {p.requirement}: {p.reason}" for p in plugins]
    description = _description(choice, packaging, metadata if from_metadata else None)
    key_files = list(packaging.files) if from_metadata else []
    key_files += [name for r in used for name in r.files]
    if packaging.built:
        # A packaged project: its code is installed too, without dependencies again, and
        # its packaging files decide that install (kept in the environment).
        key_files += packaging.files
    project_commands = (_project_install(),) if packaging.built else ()
    if config.install:
        description = " + ".join(filter(None, [description, f"{CONFIG_FILE} install"]))
        commands += config.install
        key_files.append(CONFIG_FILE)
    return InstallPlan(
        description,
        tuple(commands),
        project_commands,
        tuple(dict.fromkeys(key_files)),
        tuple(notes),
        _build_commands(packaging) if packaging.built else (),
    )
