"""A job's project: the name its owner's jobs of one code base share.

The first of these that gives a usable name: what the user asked for (`ci submit test
--project NAME`), ci.toml's `project`, the packaging metadata's name (pyproject.toml's
[project], setup.cfg's [metadata], setup.py's `setup(name=...)`), the name of the directory
`ci` was run in (which `ci` sends). The server reads the files from the upload when it is
submitted, through shapes.py, so that any client's jobs get a name; a file it cannot read
is passed over here (the job's run says what is wrong with it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from ci_server.models import CIError
from ci_server.runner.config import CONFIG_FILE, load_config
from ci_server.runner.project import packaging_name
from ci_server.runner.shapes import MAX_FILE_BYTES, ProjectError
from ci_server.runner.workspace import unpack_files

MAX_PROJECT_CHARS = 100
NAMING_FILES = (CONFIG_FILE, "pyproject.toml", "setup.cfg", "setup.py")


def usable_name(name: str | None) -> str | None:
    """The name without surrounding blanks, if it is one: 1 to MAX_PROJECT_CHARS printable
    characters."""
    if name is None:
        return None
    name = name.strip()
    return name if 0 < len(name) <= MAX_PROJECT_CHARS and name.isprintable() else None


def project_name(root: Path, *, directory: str | None = None) -> str | None:
    """The project's name from its files under `root`, else `directory` (the name of the
    folder it was sent from), else None."""
    for read in (_configured_name, packaging_name):
        try:
            name = usable_name(read(root))
        except (CIError, OSError):  # unreadable, wrong shape: not a name
            continue
        if name is not None:
            return name
    return usable_name(directory)


def given_name(given: str) -> str:
    """The name a user asked for; ProjectError if it cannot be one."""
    name = usable_name(given)
    if name is None:
        raise ProjectError(
            f"a project's name has 1 to {MAX_PROJECT_CHARS} printable characters: {given!r}"
        )
    return name


def _configured_name(root: Path) -> str | None:
    return load_config(root).project


def upload_project_name(
    upload: Path, scratch: Path, *, given: str | None = None, directory: str | None = None
) -> str | None:
    """The project name of the job of a checked upload: `given` if there is one (a
    ProjectError if it cannot be a name), else `project_name` of the files NAMING_FILES,
    unpacked into a folder under `scratch`."""
    if given is not None:
        return given_name(given)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="naming-") as folder:
        root = Path(folder)
        unpack_files(upload, root, NAMING_FILES, MAX_FILE_BYTES)
        return project_name(root, directory=directory)
