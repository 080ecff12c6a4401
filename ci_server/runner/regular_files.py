"""Opening a file a job left, safely: relative to its folder, without following a link,
and only if it is a regular file (never a link to a host file, never a FIFO or a device,
whose mere opening has effects). Blocking: run it in a thread (or a process)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class NotRegularFile(Exception):
    """The file is not a regular one, or could not be opened; the message says so."""


def open_regular(folder: Path, name: str) -> BinaryIO | None:
    """The file `name` (one name, no `/`) in `folder`, open for reading; None when there
    is none; NotRegularFile when it is something else or cannot be opened."""
    if "/" in name or name in ("", ".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    try:
        directory = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            seen = os.stat(name, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            return None
        check_regular(seen.st_mode)  # before opening: opening a FIFO or a device has effects
        try:
            descriptor = os.open(
                name,
                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
                dir_fd=directory,
            )
        except OSError as e:  # replaced since: by a link (ELOOP) or nothing
            raise NotRegularFile(f"it could not be opened: {e.strerror}") from e
    finally:
        os.close(directory)
    stream = os.fdopen(descriptor, "rb")
    try:
        check_regular(os.fstat(stream.fileno()).st_mode)
    except BaseException:
        stream.close()
        raise
    return stream


def check_regular(mode: int) -> None:
    """NotRegularFile unless `mode` is a regular file's, naming what it is instead."""
    if stat.S_ISREG(mode):
        return
    kinds: tuple[tuple[Callable[[int], bool], str], ...] = (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((word for test, word in kinds if test(mode)), "a device")
    raise NotRegularFile(f"it is {kind}, not a regular file")
