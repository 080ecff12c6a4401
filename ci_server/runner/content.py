"""What a job tested, as one digest: its project's files and the environment they ran in.

Two jobs with the same digest ran the same code the same way, so a test that passed in one
and failed in the other is flaky (models.TestHistory). The files count by their relative
path, executable bit, size and SHA-256, in path order: neither the archive's order nor its
timestamps change the digest, and a project sent as contents (whose manifest has every
file's SHA-256, checked when it was received) gets its digest without reading a file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ci_common.trees import hash_file

FileEntry = tuple[str, bool, int, str]
"""A file as the digest counts it: relative path, executable, size, SHA-256 (hex)."""


def files_digest(files: Iterable[FileEntry]) -> str:
    """The SHA-256 of the files' entries, sorted by path."""
    digest = hashlib.sha256()
    for name, executable, size, sha256 in sorted(files):
        # The size and hash end each entry: no two sets of files make the same stream.
        digest.update(f"{name}\0{'x' if executable else '-'}{size}\0{sha256}\n".encode())
    return digest.hexdigest()


def project_digest(project: Path) -> str:
    """`files_digest` of the files under `project` (read from disk: call it off the loop)."""
    files = []
    for path in project.rglob("*"):
        if path.is_file():
            status = path.stat()
            files.append(
                (
                    path.relative_to(project).as_posix(),
                    bool(status.st_mode & 0o111),
                    status.st_size,
                    hash_file(path),
                )
            )
    return files_digest(files)


def content_hash(project: str, environment: str) -> str:
    """The digest of a project's files (project_digest) run in the environment keyed
    `environment`."""
    return hashlib.sha256(f"{project}\0{environment}".encode()).hexdigest()
