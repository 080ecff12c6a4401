"""Which files of a project go to the server, and zipping them.

Always left out: version-control folders, virtual environments, caches and build output.
`.gitignore` files (the root one and nested ones) are honoured with pathspec's
git-compatible matcher.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from stat import S_ISREG

from pathspec import GitIgnoreSpec

from ci_client.client import ClientError

PROJECT_MARKERS = (
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    "pytest.ini",
    "tox.ini",
    "conftest.py",
)
ALWAYS_EXCLUDED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".tox",
        ".nox",
        ".venv",
        "venv",
        ".eggs",
        "node_modules",
        "build",
        "dist",
        ".idea",
        ".vscode",
    }
)
ALWAYS_EXCLUDED_SUFFIXES = (".pyc", ".pyo")


class NotAProject(ClientError):
    """The current directory is not a project root: a usage error (exit code 2)."""


@dataclass(frozen=True, slots=True)
class ArchiveSummary:
    files: int
    source_bytes: int
    archive_bytes: int


def check_project_root(root: Path) -> None:
    """Refuse a directory that does not look like the root of a Python project."""
    if not root.is_dir():
        raise NotAProject(f"{root} is not a directory")
    if any((root / marker).exists() for marker in PROJECT_MARKERS):
        return
    if (root / "tests").is_dir() or any(root.glob("*.py")):
        return
    raise NotAProject(
        f"{root} does not look like a Python project root: expected one of "
        f"{', '.join(PROJECT_MARKERS)}, a tests/ folder or .py files. "
        "Run `ci submit test` in your project's root directory."
    )


def _is_virtualenv(directory: Path) -> bool:
    return (directory / "pyvenv.cfg").is_file()


def _excluded_dir(directory: Path) -> bool:
    name = directory.name
    return name in ALWAYS_EXCLUDED_DIRS or name.endswith(".egg-info") or _is_virtualenv(directory)


_NAMED_GROUP = re.compile(r"\(\?P<\w+>")


class _IgnoreFile:
    """A .gitignore: its folder (relative, "" for the root) and its patterns."""

    __slots__ = ("_any_ignoring", "base", "spec")

    def __init__(self, base: str, spec: GitIgnoreSpec) -> None:
        self.base = base
        self.spec = spec
        self._any_ignoring = _any_ignoring(spec)

    def ignores(self, path: str) -> bool:
        """Whether the patterns ignore `path` (relative to `base`, `/` after a folder)."""
        if self._any_ignoring is not None and self._any_ignoring.search(path) is None:
            return False  # no pattern that ignores matches: none can ignore it
        return self.spec.match_file(path)


def _any_ignoring(spec: GitIgnoreSpec) -> re.Pattern[str] | None:
    """One expression that matches wherever one of the spec's ignoring (not `!`) patterns
    does, or None if they cannot be joined. pathspec tries each pattern in turn: a common
    Python .gitignore (about 80 patterns) took 0.3 s for 20,000 files; most files match
    none, and this tells so in one search. A group's name may be used once in an
    expression, and pathspec names one in most patterns: named groups become
    non-capturing, which matches the same, when every group is named and every `(?P<`
    found is one of them (none in a `[...]`), and the pattern has no flag."""
    sources = []
    for pattern in spec.patterns:
        if pattern.include is not True:  # a comment, or a `!` pattern: ignores nothing
            continue
        regex = getattr(pattern, "regex", None)
        if not isinstance(regex, re.Pattern) or not isinstance(regex.pattern, str):
            return None
        source, named = _NAMED_GROUP.subn("(?:", regex.pattern)
        if regex.flags != re.UNICODE or not named == regex.groups == len(regex.groupindex):
            return None
        sources.append(f"(?:{source})")
    try:
        return re.compile("|".join(sources)) if sources else None
    except re.error:
        return None


def iter_project_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """The files worth sending: each one's path relative to `root` (with `/`, sorted per
    folder) and its status (stat: followed, as reading it will), one stat a file."""
    for folder, files in iter_project_folders(root):
        prefix = f"{folder}/" if folder else ""
        for name, status in files:
            yield prefix + name, status


def iter_project_folders(root: Path) -> Iterator[tuple[str, list[tuple[str, os.stat_result]]]]:
    """`iter_project_files` a folder at a time: each folder entered (relative to `root`, ""
    for the root itself, parents before their subfolders) with its files worth sending
    (name and status, sorted by name; none for a folder of folders)."""
    ignore_files: list[_IgnoreFile] = []
    pending = [""]
    while pending:
        folder = pending.pop()
        here = root / folder if folder else root
        gitignore = here / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(errors="replace").splitlines()
            ignore_files.append(_IgnoreFile(folder, GitIgnoreSpec.from_lines(lines)))
        rules = _FolderRules(folder, ignore_files)
        with _opened(here) as readable:  # open while its entries are stat'ed
            subfolders, files = _scan(readable)
            for name in sorted(subfolders, reverse=True):  # popped in order
                if not _excluded_dir(here / name) and not rules.ignores(name, is_dir=True):
                    pending.append(f"{folder}/{name}" if folder else name)
            picked = _files_worth_sending(files, rules)
        yield folder, picked


@contextlib.contextmanager
def _opened(folder: Path) -> Iterator[int | Path]:
    """`folder` as scandir should read it: a descriptor where it can (each entry's stat
    then looks up its name, not the whole path again: 72 ms -> 65 ms for 20,000 files),
    else its path."""
    if os.scandir not in os.supports_fd:
        yield folder
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _scan(folder: int | Path) -> tuple[list[str], list[os.DirEntry[str]]]:
    """The names of the folders in `folder` (not links to folders: as os.walk, those are
    not entered) and its other entries, sorted by name."""
    subfolders: list[str] = []
    others: list[os.DirEntry[str]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_dir():
                others.append(entry)
            elif not entry.is_symlink():
                subfolders.append(entry.name)
    others.sort(key=attrgetter("name"))
    return subfolders, others


def _files_worth_sending(
    entries: list[os.DirEntry[str]], rules: _FolderRules
) -> list[tuple[str, os.stat_result]]:
    """The regular files (a link followed) among `entries` that no rule leaves out. The
    names are sifted first, each rule in one pass: no call per file for rules that are
    not there (most folders have no .gitignore over them)."""
    named = [entry for entry in entries if not entry.name.endswith(ALWAYS_EXCLUDED_SUFFIXES)]
    if rules:
        named = [entry for entry in named if not rules.ignores(entry.name, is_dir=False)]
    files: list[tuple[str, os.stat_result]] = []
    for entry in named:
        try:
            status = entry.stat()
        except OSError:  # a broken link
            continue
        if S_ISREG(status.st_mode):  # not a socket or the like
            files.append((entry.name, status))
    return files


class _FolderRules:
    """The .gitignore files that apply in one folder: those of the folder and of its
    parents, chosen once per folder, not once per file. False when there are none."""

    __slots__ = ("_applying",)

    def __init__(self, folder: str, ignore_files: list[_IgnoreFile]) -> None:
        prefix = f"{folder}/" if folder else ""
        self._applying = [
            (rules, prefix[len(rules.base) + 1 :] if rules.base else prefix)
            for rules in ignore_files
            if not rules.base or prefix.startswith(f"{rules.base}/")
        ]
        """Each .gitignore that applies with the folder's path relative to its own."""

    def __bool__(self) -> bool:
        return bool(self._applying)

    def ignores(self, name: str, is_dir: bool) -> bool:
        """Whether a .gitignore leaves out the entry `name` of the folder."""
        suffix = "/" if is_dir else ""
        return any(rules.ignores(f"{within}{name}{suffix}") for rules, within in self._applying)


def build_archive(root: Path, destination: Path) -> ArchiveSummary:
    """Zip the project's files into `destination`, streaming file by file."""
    files = 0
    source_bytes = 0
    # Zip cannot store times before 1980, and reproducible builds date files to 1970
    # (flit's sdists do for PKG-INFO): such files are stored as of 1980-01-01.
    with zipfile.ZipFile(
        destination, "w", compression=zipfile.ZIP_DEFLATED, strict_timestamps=False
    ) as archive:
        for relative, status in iter_project_files(root):
            archive.write(root / relative, relative)
            files += 1
            source_bytes += status.st_size
    return ArchiveSummary(files, source_bytes, destination.stat().st_size)
