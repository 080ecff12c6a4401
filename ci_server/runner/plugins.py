"""The pytest plugins a project needs without listing them, found from a table.

Each row says what a plugin brings that a project may use: command-line options (in the
pytest configuration's `addopts`, ci.toml's `pytest_args` or its `PYTEST_ADDOPTS`, or the
job's own pytest arguments: `ci submit test --rerun-failures 3` sends `--reruns 3`),
configuration keys, markers and fixtures its tests use. A project using one gets the plugin
installed, and the job's log says why. pytest's own `required_plugins` are taken as they are.
What is not in the table stays the user's to install: pytest says what it does not know. A
plugin the project's dependencies list is never added (they may pin it).

Only the configuration pytest itself would read is read (the first of pytest.ini,
.pytest.ini, pyproject.toml, tox.ini, setup.cfg that has pytest's section), and only test
modules and conftest.py files are scanned, as text: nothing is imported or run.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import re
import shlex
import stat
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ci_server.runner.config import CONFIG_FILE, ProjectConfig
from ci_server.runner.dependencies import normalized, requirement_name, tool_table
from ci_server.runner.shapes import plain_strings, read_text


@dataclass(frozen=True, slots=True)
class Plugin:
    distribution: str
    options: tuple[str, ...] = ()
    """Its command-line options, as shell patterns of their names (`--cov*`, `-n*`)."""
    settings: tuple[str, ...] = ()
    """Its keys in pytest's configuration (`asyncio_mode`)."""
    markers: tuple[str, ...] = ()
    """Its markers, as tests use them (`@pytest.mark.asyncio`)."""
    fixtures: tuple[str, ...] = ()
    """Its fixtures, as tests and conftest.py files ask for them."""


PLUGINS = (
    Plugin("pytest-cov", options=("--cov*", "--no-cov*"), markers=("no_cover",)),
    Plugin(
        "pytest-xdist",
        options=("-n*", "--numprocesses", "--maxprocesses", "--dist", "--max-worker-restart"),
        markers=("xdist_group",),
    ),
    Plugin(
        "pytest-asyncio",
        options=("--asyncio-mode",),
        settings=(
            "asyncio_mode",
            "asyncio_default_fixture_loop_scope",
            "asyncio_default_test_loop_scope",
        ),
        markers=("asyncio",),
    ),
    Plugin(
        "pytest-mock",
        settings=("mock_use_standalone_module", "mock_traceback_monkeypatch"),
        fixtures=("mocker", "class_mocker", "module_mocker", "package_mocker", "session_mocker"),
    ),
    Plugin(
        "pytest-timeout",
        options=("--timeout*",),
        settings=("timeout", "timeout_method", "timeout_func_only"),
        markers=("timeout",),
    ),
    Plugin(
        "pytest-django",
        options=("--ds", "--dc", "--reuse-db", "--create-db", "--nomigrations", "--migrations"),
        settings=("django_settings_module", "django_configuration", "django_find_project"),
        markers=("django_db", "urls", "ignore_template_errors"),
        fixtures=(
            "admin_client",
            "django_user_model",
            "django_assert_num_queries",
            "django_assert_max_num_queries",
            "django_capture_on_commit_callbacks",
            "django_db_setup",
            "live_server",
            "mailoutbox",
        ),
    ),
    Plugin(
        "pytest-benchmark",
        options=("--benchmark-*",),
        markers=("benchmark",),
        fixtures=("benchmark",),
    ),
    Plugin("pytest-httpx", markers=("httpx_mock",), fixtures=("httpx_mock",)),
    Plugin("pytest-httpserver", fixtures=("httpserver", "httpserver_ipv4", "httpserver_ipv6")),
    Plugin("requests-mock", fixtures=("requests_mock",)),
    Plugin("pytest-randomly", options=("--randomly-*",)),
    Plugin(
        "pytest-rerunfailures",
        options=("--reruns*", "--only-rerun", "--rerun-except"),
        settings=("reruns", "reruns_delay"),
    ),
    Plugin(
        "pytest-doctestplus",
        options=("--doctest-plus", "--doctest-rst", "--doctest-only", "--text-file-format"),
        settings=("doctest_plus", "doctest_rst", "text_file_format", "doctest_subpackage_requires"),
    ),
    Plugin("pytest-env", settings=("env",)),
    Plugin("pytest-dotenv", settings=("env_files", "env_override_existing_values")),
    Plugin("pytest-mypy", options=("--mypy*",)),
    Plugin("pytest-html", options=("--html", "--self-contained-html")),
    Plugin("pytest-json-report", options=("--json-report*",)),
    Plugin("pytest-instafail", options=("--instafail",)),
    Plugin("pytest-forked", options=("--forked",), markers=("forked",)),
    Plugin("pytest-order", markers=("order",)),
    Plugin("pytest-dependency", markers=("dependency",)),
    Plugin("pytest-repeat", options=("--count",), markers=("repeat",)),
    Plugin("pytest-trio", settings=("trio_mode", "trio_run"), markers=("trio",)),
    Plugin(
        "pytest-aiohttp",
        fixtures=("aiohttp_client", "aiohttp_server", "aiohttp_raw_server", "aiohttp_unused_port"),
    ),
    Plugin("pytest-recording", options=("--record-mode", "--block-network"), markers=("vcr",)),
    Plugin(
        "pytest-socket",
        options=("--disable-socket", "--allow-hosts", "--allow-unix-socket"),
        markers=("enable_socket", "disable_socket", "allow_hosts"),
    ),
    Plugin("pytest-datadir", fixtures=("datadir", "shared_datadir", "original_datadir")),
    Plugin("pytest-mpl", options=("--mpl*",), markers=("mpl_image_compare",)),
)

REQUIRED_PLUGINS = "required_plugins"
"""pytest's own setting: the plugins (requirements) a project needs."""
DEFAULT_PYTHON_FILES = ("test_*.py", "*_test.py")
SKIPPED_FOLDERS = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv")
"""pytest's `norecursedirs` by default: never test folders."""
MAX_SCANNED_BYTES = 1024**2
"""A bigger test module is not scanned (generated data, not tests)."""

_MARKER = re.compile(r"mark\.([A-Za-z_]\w*)")
_SIGNATURE = re.compile(r"def\s+(\w+)\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)")
"""`def name(parameters)`, defaults with a call (`x=f()`) included. Its parts never span
a parenthesis they do not close, so that a module of `def f(` without one is read in
linear time, not quadratic."""
_USEFIXTURES = re.compile(r"usefixtures\(([^()]*)\)")
_NAME = re.compile(r"[A-Za-z_]\w*")
_FIXTURES = frozenset(fixture for plugin in PLUGINS for fixture in plugin.fixtures)


@dataclass(frozen=True, slots=True)
class NeededPlugin:
    requirement: str
    reason: str
    """Why, for the job's log: `--cov=calc in pytest.ini addopts`."""


@dataclass(frozen=True, slots=True)
class PytestConfig:
    label: str
    """Which file and section: `pyproject.toml [tool.pytest.ini_options]`."""
    settings: Mapping[str, Any]
    """Its keys, lowercased (ini files lowercase them), to strings or lists."""


def _ini_section(root: Path, name: str, section: str) -> Mapping[str, Any] | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(read_text(root, name))
    except configparser.Error:
        return None
    return dict(parser.items(section)) if parser.has_section(section) else None


def pytest_config(root: Path, pyproject: Mapping[str, Any]) -> PytestConfig | None:
    """The configuration pytest reads in the project root, as it chooses it."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (root / name).is_file():
            return PytestConfig(name, _ini_section(root, name, "pytest") or {})
    tool = tool_table(pyproject, "pytest")
    if tool:
        options = tool.get("ini_options")
        if isinstance(options, dict):
            settings = {k.lower(): v for k, v in options.items()}
            return PytestConfig("pyproject.toml [tool.pytest.ini_options]", settings)
        settings = {k.lower(): v for k, v in tool.items()}  # pytest 9's native table
        return PytestConfig("pyproject.toml [tool.pytest]", settings)
    for name, section in (("tox.ini", "pytest"), ("setup.cfg", "tool:pytest")):
        settings = _ini_section(root, name, section) if (root / name).is_file() else None
        if settings is not None:
            return PytestConfig(f"{name} [{section}]", settings)
    return None


def _words(value: Any) -> list[str]:
    """A setting's words: an ini value is split as a shell would, a TOML list item too."""
    items = value if isinstance(value, list) else [value]
    words: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        try:
            words += shlex.split(item)
        except ValueError:
            words += item.split()
    return words


def _options(
    config: PytestConfig | None, project: ProjectConfig, command_line: Sequence[str]
) -> Iterator[tuple[str, str]]:
    """(option, where) for each option the project, or the job, passes pytest."""
    places = [
        (f"{CONFIG_FILE} pytest_args", list(project.pytest_args)),
        ("the job's pytest arguments", list(command_line)),
    ]
    if "PYTEST_ADDOPTS" in project.env:
        places.append((f"{CONFIG_FILE} PYTEST_ADDOPTS", [project.env["PYTEST_ADDOPTS"]]))
    if config is not None:
        places.insert(0, (f"{config.label} addopts", config.settings.get("addopts", [])))
    for where, value in places:
        for word in _words(value):
            if word.startswith("-"):
                yield word, where


def _any_of(patterns: Iterable[str]) -> Callable[[str], object]:
    """Whether a name matches one of the glob `patterns` (as fnmatchcase), in one search:
    a project of 20,000 files asked fnmatch ten times a file."""
    return re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)).match


def _test_files(
    root: Path, patterns: tuple[str, ...], paths: Collection[str] | None = None
) -> Iterator[tuple[Path, str]]:
    """(path, path in the project) of the test modules and conftest.py files, in a stable
    order (a folder's files by name, then its folders' by name), skipping the folders
    pytest does not collect by default. `paths`: the project's files, if known (relative,
    `/`-separated: a job's manifest), are not looked for again on disk (20,000 files: 0.02 s)."""
    skipped, wanted = _any_of(SKIPPED_FOLDERS), _any_of(("conftest.py", *patterns))
    if paths is not None:
        chosen = []
        for path in paths:
            folder, _, name = path.rpartition("/")
            if wanted(name) and not (folder and any(map(skipped, folder.split("/")))):
                chosen.append(path)
        for path in sorted(chosen, key=_walk_order):
            yield root.joinpath(*path.split("/")), path
        return
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not skipped(name))
        inside = Path(folder).relative_to(root).as_posix()
        for name in sorted(files):
            if wanted(name):
                yield Path(folder, name), name if inside == "." else f"{inside}/{name}"


def _walk_order(path: str) -> list[tuple[int, str]]:
    """Sorts paths as a walk from the root finds them: in each folder its files by name,
    then its folders by name."""
    *folders, name = path.split("/")
    return [*((1, folder) for folder in folders), (0, name)]


def _declared_markers(config: PytestConfig | None) -> set[str]:
    """The markers the project registers itself (`markers = slow: ...`): its own."""
    value = config.settings.get("markers", []) if config is not None else []
    lines = value.splitlines() if isinstance(value, str) else plain_strings(value)
    return {match.group(0) for line in lines if (match := _NAME.match(line.strip()))}


def _used_in_tests(
    root: Path, config: PytestConfig | None, paths: Collection[str] | None
) -> dict[str, str]:
    """`marker:<name>` and `fixture:<name>` the tests use, each with the first file, but
    the markers the project registers and the fixtures it defines: those are its own."""
    patterns = DEFAULT_PYTHON_FILES
    if config is not None and config.settings.get("python_files"):
        patterns = tuple(_words(config.settings["python_files"]))
    used: dict[str, str] = {}
    own = {f"marker:{marker}" for marker in _declared_markers(config)}
    for path, where in _test_files(root, patterns, paths):
        try:
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode) or status.st_size > MAX_SCANNED_BYTES:
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if "mark." in text:
            for marker in _MARKER.findall(text):
                used.setdefault(f"marker:{marker}", where)
        # The names in functions' parentheses: their parameters (and, rarely, a default's or
        # an annotation's words). One pass of a regular expression with a literal start:
        # 5,000 modules of 60 tests each take about half a second, in the job's thread.
        functions = _SIGNATURE.findall(text)
        own.update(f"fixture:{name}" for name, _ in functions if name in _FIXTURES)
        requested = set(_NAME.findall(" ".join(parameters for _, parameters in functions)))
        if "usefixtures" in text:
            for names in _USEFIXTURES.findall(text):
                requested.update(re.findall(r"[\"'](\w+)[\"']", names))
        for name in sorted(requested & _FIXTURES):
            used.setdefault(f"fixture:{name}", where)
    return {use: where for use, where in used.items() if use not in own}


def _reason(
    plugin: Plugin,
    options: list[tuple[str, str]],
    config: PytestConfig | None,
    used: Mapping[str, str],
) -> str | None:
    """Why the project needs `plugin`, if it does."""
    for option, where in options:
        name = option.split("=", 1)[0]
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in plugin.options):
            return f"{option} in {where}"
    if config is not None:
        for setting in plugin.settings:
            if setting in config.settings:
                return f"{setting} in {config.label}"
    for marker in plugin.markers:
        if f"marker:{marker}" in used:
            return f"the {marker} marker in {used[f'marker:{marker}']}"
    for fixture in plugin.fixtures:
        if f"fixture:{fixture}" in used:
            return f"the {fixture} fixture in {used[f'fixture:{fixture}']}"
    return None


def needed_plugins(
    root: Path,
    pyproject: Mapping[str, Any],
    project: ProjectConfig,
    listed: frozenset[str],
    command_line: Sequence[str] = (),
    paths: Collection[str] | None = None,
) -> list[NeededPlugin]:
    """The plugins the project uses and its dependencies (`listed`: normalized names) do
    not list, in the table's order (the install command keys the environment). `paths`:
    the project's files, if known (see `_test_files`)."""
    config = pytest_config(root, pyproject)
    needed: list[NeededPlugin] = []
    if config is not None:
        for requirement in _words(config.settings.get(REQUIRED_PLUGINS, [])):
            if requirement_name(requirement) not in listed:
                needed.append(NeededPlugin(requirement, f"{REQUIRED_PLUGINS} in {config.label}"))
    options = list(_options(config, project, command_line))
    used = _used_in_tests(root, config, paths)
    taken = listed | {requirement_name(plugin.requirement) for plugin in needed}
    for plugin in PLUGINS:
        if normalized(plugin.distribution) in taken:
            continue
        reason = _reason(plugin, options, config, used)
        if reason is not None:
            needed.append(NeededPlugin(plugin.distribution, reason))
    return needed
