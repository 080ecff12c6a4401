"""Which files of a project go to the server, and zipping them.

Always left out: version-control folders, virtual environments, caches and build output.
`.gitignore` files (the root one and nested ones) are honoured with pathspec's
git-compatible matcher.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def iter_project_files(root: Path) -> Iterator[Path]:
    """Paths (relative to `root`, sorted per folder) of the files worth sending."""
    specs: list[tuple[Path, GitIgnoreSpec]] = []

    def ignored(relative: Path, is_dir: bool) -> bool:
        for base, spec in specs:
            if relative.is_relative_to(base):
                text = relative.relative_to(base).as_posix() + ("/" if is_dir else "")
                if spec.match_file(text):
                    return True
        return False

    for current, dirnames, filenames in os.walk(root):
        here = Path(current)
        relative_here = here.relative_to(root)
        gitignore = here / ".gitignore"
        if gitignore.is_file():
            lines = gitignore.read_text(errors="replace").splitlines()
            specs.append((relative_here, GitIgnoreSpec.from_lines(lines)))
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not _excluded_dir(here / d) and not ignored(relative_here / d, is_dir=True)
        )
        for name in sorted(filenames):
            relative = relative_here / name
            if name.endswith(ALWAYS_EXCLUDED_SUFFIXES) or ignored(relative, is_dir=False):
                continue
            if (here / name).is_file():  # skips broken links, sockets and the like
                yield relative


def build_archive(root: Path, destination: Path) -> ArchiveSummary:
    """Zip the project's files into `destination`, streaming file by file."""
    files = 0
    source_bytes = 0
    # Zip cannot store times before 1980, and reproducible builds date files to 1970
    # (flit's sdists do for PKG-INFO): such files are stored as of 1980-01-01.
    with zipfile.ZipFile(
        destination, "w", compression=zipfile.ZIP_DEFLATED, strict_timestamps=False
    ) as archive:
        for relative in iter_project_files(root):
            path = root / relative
            archive.write(path, relative.as_posix())
            files += 1
            source_bytes += path.stat().st_size
    return ArchiveSummary(files, source_bytes, destination.stat().st_size)
