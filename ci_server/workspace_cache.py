"""On each worker, the last workspace of each owner's project, so that a job sent as
contents writes only what changed since (issue 17: a 200 MB project written afresh took
2.5 s, and removing it after the job 4 to 8 s more).

An entry is a folder `<key>/` holding `files/` (the project's tree, as the job's workspace
had it) and `manifest` (the files it holds, contents.py's encoding). `key` is a digest of
the owner's id and the project's name: an entry is only ever found for its owner, never
for another user with the same project or the same files.

An entry is *lent*, not copied: `take` renames it into the job's own folder, where the job
runs on it, and `keep` renames it back after the job. So one job at a time has it (another
job of the same project meanwhile assembles its workspace in full, and the entry kept last
wins) and nothing is copied. That is sound because nothing writes a job's workspace once it
is written: every container mounts it read-only (a job's tests see it through an overlay:
runner/scratch.py), the server only reads it, and the executor only moves its top-level
entries into a warm container's folder and back, and gives them to the tests' user. `keep`
checks those are all back (a cancelled job's are not) before it keeps the tree; else the
tree is removed with the job's folder.

The manifest kept is the job's own file, moved in; the files it lists stay decoded in memory
too, for the next `take` (reading 20,000 of them back cost 0.044 s of a job), as long as
the file is the one this process kept (workers sharing the folder keep entries too).

Entries beyond `size` are evicted, least recently kept first, in the background
(runner/workspace.py's Removals).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import uuid
from pathlib import Path

from ci_server.contents import ManifestFile, read_manifest
from ci_server.models import CIError
from ci_server.runner.workspace import Removals, remove_tree

logger = logging.getLogger(__name__)

FILES = "files"
MANIFEST = "manifest"
TRASH_PREFIX = "trash-"
"""An evicted entry's folder while it is removed (renamed first: no job can take it)."""


def entry_key(owner: str, project: str | None) -> str:
    return hashlib.sha256(f"{owner}\0{project or ''}".encode()).hexdigest()


Stamp = tuple[int, int, int]


def _stamp(path: Path) -> Stamp:
    """Which file `path` is: its inode, modification time and size."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns, status.st_size


class WorkspaceCache:
    def __init__(self, directory: Path, size: int, removals: Removals) -> None:
        """`directory` must be on the job workspaces' file system (entries move by renames);
        evicted entries go to `removals`."""
        self.directory = directory
        self.size = size
        self.removals = removals
        self._decoded: dict[str, tuple[Stamp, list[ManifestFile]]] = {}
        """The files of the entries this process kept, by key, with their manifest's stamp."""

    async def take(self, owner: str, project: str | None, destination: Path) -> list[ManifestFile]:
        """Move the owner's last tree of `project` to the new folder `destination`; the files
        it holds. Nothing there (or no cache): an empty `destination`, and no files."""
        if self.size <= 0:
            await asyncio.to_thread(destination.mkdir)
            return []
        return await asyncio.to_thread(self._take, entry_key(owner, project), destination)

    def _take(self, key: str, destination: Path) -> list[ManifestFile]:
        lent = destination.with_name(f"{destination.name}.entry")
        try:
            (self.directory / key).rename(lent)  # atomic: one job has it, or another
        except OSError:  # FileNotFoundError: none yet
            destination.mkdir()
            return []
        try:
            files = self._files(key, lent / MANIFEST)
            (lent / FILES).rename(destination)
        except (OSError, ValueError, CIError):  # a damaged entry (a crash while it was kept)
            remove_tree(lent)
            remove_tree(destination)
            destination.mkdir()
            return []
        remove_tree(lent)
        return files

    def _files(self, key: str, manifest: Path) -> list[ManifestFile]:
        """The files of the entry `key` (lent, its manifest file at `manifest`)."""
        decoded = self._decoded.pop(key, None)
        if decoded is not None and decoded[0] == _stamp(manifest):
            return decoded[1]
        return read_manifest(manifest)

    async def keep(
        self,
        owner: str,
        project: str | None,
        files: list[ManifestFile],
        tree: Path,
        manifest: Path,
    ) -> bool:
        """Keep `tree`, which holds `files`, as the owner's last tree of `project`, with the
        job's `manifest` file (which lists them: moved in), if the tree's top-level entries
        are all there (the executor moved them back after the job); whether it was kept. An
        entry kept meanwhile by another job stays."""
        if self.size <= 0:
            return False
        key = entry_key(owner, project)
        try:
            kept, doomed = await asyncio.to_thread(self._keep, key, files, tree, manifest)
        except OSError as e:  # never the job's failure: its next run writes it all
            logger.warning("could not keep the workspace %s: %s", tree, e)
            return False
        for trash in doomed:
            self.removals.remove(trash)
        return kept

    def _keep(
        self, key: str, files: list[ManifestFile], tree: Path, manifest: Path
    ) -> tuple[bool, list[Path]]:
        top = {f.path.split("/")[0] for f in files}
        if not tree.is_dir() or {entry.name for entry in tree.iterdir()} != top:
            return False, []
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = tree.with_name(f"{tree.name}.entry")
        entry.mkdir()
        manifest.rename(entry / MANIFEST)
        tree.rename(entry / FILES)
        try:
            entry.rename(self.directory / key)
        except OSError:  # another job's entry is there already
            entry.joinpath(FILES).rename(tree)
            remove_tree(entry)
            return False, []
        os.utime(self.directory / key)  # the most recently kept
        self._decoded[key] = (_stamp(self.directory / key / MANIFEST), files)
        return True, self._beyond_size()

    def _beyond_size(self) -> list[Path]:
        """The entries beyond `size`, least recently kept first, renamed aside (no job can
        take them then), and what a stopped process left aside."""
        removing = self.removals.under_way()
        entries = []
        doomed = []
        for entry in self.directory.iterdir():
            if entry.name.startswith(TRASH_PREFIX):
                if entry not in removing:
                    doomed.append(entry)
                continue
            with contextlib.suppress(FileNotFoundError):  # taken meanwhile
                entries.append((entry.stat().st_mtime, entry))
        entries.sort(reverse=True)
        for _, entry in entries[self.size :]:
            trash = self.directory / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
            with contextlib.suppress(FileNotFoundError):
                entry.rename(trash)
                doomed.append(trash)
            self._decoded.pop(entry.name, None)
        return doomed
