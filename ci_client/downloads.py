"""Where `ci artifacts` writes a job's files: under the folder asked for and nowhere else,
whatever paths the server names (they come from a job's files), and each file whole or not
at all, checked against the size and digest the server listed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ci_common.artifact_paths import safe_path


class UnsafeArtifact(Exception):
    """An artifact that cannot be written where asked: its path would leave the folder, or
    its bytes are not those listed."""


def target_of(folder: Path, path: str) -> Path:
    """The file under `folder` for the artifact `path`, its folders made (none through a
    symbolic link); UnsafeArtifact when the path could land anywhere else."""
    if safe_path(path) is None:
        raise UnsafeArtifact(f"{path!r} is not a safe relative path")
    root = folder.resolve()
    target = root.joinpath(*path.split("/"))
    parent = root
    for part in path.split("/")[:-1]:
        parent = parent / part
        if parent.is_symlink():
            raise UnsafeArtifact(f"{path!r}: {parent} is a symbolic link")
        parent.mkdir(exist_ok=True)
    if not target.parent.resolve().is_relative_to(root):
        raise UnsafeArtifact(f"{path!r} would be written outside {folder}")
    return target


def write_checked(target: Path, chunks: Iterable[bytes], size: int, sha256: str) -> None:
    """Write `chunks` to `target` (replacing a file or a link there, never writing through
    one) if they are `size` bytes of digest `sha256`; UnsafeArtifact if not."""
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name[:50]}.", dir=target.parent)
    partial = Path(name)
    try:
        digest, written = hashlib.sha256(), 0
        with os.fdopen(descriptor, "wb") as out:
            for chunk in chunks:
                written += len(chunk)
                if written > size:
                    break
                digest.update(chunk)
                out.write(chunk)
        if written != size or digest.hexdigest() != sha256:
            raise UnsafeArtifact(f"{target.name}: the bytes received are not those listed")
        partial.replace(target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
