"""A job's /tmp, and its project there as an overlay of the uploaded files instead of a copy.

A job's tests run in a writable copy of its project, /tmp/project (scripts.PROJECT_DIR):
they may write into it as into a checkout. Copying it there costs its size in time (200 MB:
0.4 to 1 s of every job, however little changed since the last one, which the upload and the
kept workspace no longer pay) and in the job's /tmp, which is memory.

So when the worker may mount file systems (it runs as root, in the Docker engine's mount
namespace), a job's container gets as its /tmp a tmpfs the worker mounted (`Scratch`,
bounded like the engine's own), bound into the container with slave propagation: whatever
the worker mounts under it later shows in the container. At hand-over, the worker mounts
an overlay at /tmp/project: the uploaded files its lower layer, read-only and shared with
/src; the job's writes going to an upper layer on the same tmpfs, out of the job's sight and
counted against the same size. The job's script finds /tmp/project already there and copies
nothing (scripts._copy_source). When the job is over, the overlay is unmounted before the
files go back to the workspace, and the tmpfs with the container.

The tests must be able to write into the overlay as into their own copy: the lower layer's
files and folders must be the user's the tests run as, as `cp` made them theirs. The
pipeline writes a job's workspace so (runner/workspace.py's `give_to` for a zip, contents.py's
`assemble` for the files it writes), which spares each job a walk of the whole tree (20,000
files: 0.07 s).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ci_server.runner import mounts
from ci_server.runner.scripts import PROJECT_DIR
from ci_server.runner.workspace import Ids

logger = logging.getLogger(__name__)

CONTAINER_TMP = "/tmp"
PROJECT = PurePosixPath(PROJECT_DIR).relative_to(CONTAINER_TMP)
"""The overlay's folder in the container's /tmp."""


def numeric_ids(user: str | None) -> Ids | None:
    """The uid and gid of a container's `user` given as `uid:gid` numbers; None for any
    other form (a name is only known inside the image)."""
    uid, _, gid = (user or "").partition(":")
    if uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    return None


@dataclass(frozen=True, slots=True)
class Scratch:
    """A container's /tmp: a tmpfs mounted at `root`, which holds `tmp` (bound at /tmp),
    and the overlay's upper and work folders beside it."""

    root: Path
    uid: int
    gid: int

    @classmethod
    def make(cls, root: Path, size: int, uid: int, gid: int) -> Scratch:
        """Mount a tmpfs of `size` bytes at the existing, empty folder `root`."""
        flags = mounts.MS_NOSUID | mounts.MS_NODEV
        mounts.mount("ci-scratch", root, "tmpfs", f"size={size},mode=0700", flags)
        scratch = cls(root, uid, gid)
        try:
            mounts.make_shared(root)
            scratch.tmp.mkdir()
            scratch.tmp.chmod(0o1777)
            for folder in (scratch.project, scratch._upper):
                folder.mkdir()
                os.chown(folder, uid, gid)
            scratch._work.mkdir()
        except OSError:
            scratch.remove()
            raise
        return scratch

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def project(self) -> Path:
        return self.tmp / PROJECT

    @property
    def _upper(self) -> Path:
        return self.root / "upper"

    @property
    def _work(self) -> Path:
        return self.root / "work"

    def volumes(self) -> dict[str, dict[str, str]]:
        """The container's /tmp, with what the worker mounts under it later."""
        return {str(self.tmp): {"bind": CONTAINER_TMP, "mode": "rw,rslave"}}

    def lay_over(self, lower: Path) -> None:
        """Mount the project at /tmp/project: the files of `lower` (the tests' user's: see
        the module), the job's writes on this tmpfs."""
        options = f"lowerdir={lower.resolve()},upperdir={self._upper},workdir={self._work}"
        flags = mounts.MS_NOSUID | mounts.MS_NODEV
        mounts.mount("ci-project", self.project, "overlay", options, flags)

    def lift(self) -> None:
        """Unmount the project's overlay, if it is there: its lower layer may change again."""
        for point in mounts.mounts_under(self.project):
            mounts.unmount(point)

    def remove(self) -> None:
        """Unmount everything here, the tmpfs last (what the job wrote goes with it), and
        remove the folder."""
        mounts.unmount_all_under(self.root)
        self.root.rmdir()
