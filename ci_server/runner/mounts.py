"""Mounting and unmounting file systems, for scratch.py: the mount(2) and umount2(2) calls
of the C library (Python's standard library has none), and the mounts under a folder as
/proc/self/mountinfo lists them."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_SHARED = 0x100000
MNT_DETACH = 0x2
MOUNTINFO = Path("/proc/self/mountinfo")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def _check(result: int, target: Path) -> None:
    if result != 0:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number), str(target))


def mount(source: str, target: Path, fstype: str, options: str, flags: int = 0) -> None:
    """mount(2): the file system `fstype` from `source` at `target`; OSError on failure
    (PermissionError without CAP_SYS_ADMIN)."""
    result = _libc.mount(
        source.encode(), os.fsencode(target), fstype.encode(), flags, options.encode()
    )
    _check(result, target)


def make_shared(target: Path) -> None:
    """Make the mount at `target` shared: what is mounted under it later shows, too, in the
    bind mounts of it made with slave propagation (a container's)."""
    _check(_libc.mount(None, os.fsencode(target), None, MS_SHARED, None), target)


def unmount(target: Path) -> None:
    """Detach the mount at `target` (lazily: it goes once nothing uses it any more)."""
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), target)


def _unescape(field: str) -> str:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written in octal."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def mounts_under(folder: Path) -> list[Path]:
    """The mount points at or under `folder`, deepest first (the order to unmount them)."""
    root = folder.resolve()
    found = []
    for line in MOUNTINFO.read_text().splitlines():
        point = Path(_unescape(line.split(" ")[4]))
        if point == root or point.is_relative_to(root):
            found.append(point)
    return sorted(found, key=lambda point: len(point.parts), reverse=True)


def unmount_all_under(folder: Path) -> None:
    """Unmount everything mounted at or under `folder` (left by a worker that died)."""
    for point in mounts_under(folder):
        unmount(point)
