"""What a job tested, as one digest: its project's files and the environment they ran in.

Two jobs with the same digest ran the same code the same way, so a test that passed in one
and failed in the other is flaky (models.TestHistory). The files count by their relative
path, executable bit and bytes, in path order: neither the archive's order nor its
timestamps change the digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

READ_CHUNK = 1024 * 1024


def project_digest(project: Path) -> str:
    """The SHA-256 of the files under `project` (read from disk: call it off the loop)."""
    digest = hashlib.sha256()
    files = sorted(
        (path.relative_to(project).as_posix(), path)
        for path in project.rglob("*")
        if path.is_file()
    )
    for name, path in files:
        status = path.stat()
        executable = "x" if status.st_mode & 0o111 else "-"
        # Each file's length before its bytes: no two sets of files make the same stream.
        digest.update(f"{name}\0{executable}{status.st_size}\0".encode())
        with path.open("rb") as file:
            while chunk := file.read(READ_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def content_hash(project: str, environment: str) -> str:
    """The digest of a project's files (project_digest) run in the environment keyed
    `environment`."""
    return hashlib.sha256(f"{project}\0{environment}".encode()).hexdigest()
