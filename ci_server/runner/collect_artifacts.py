"""Run in the container when the tests are over, in the project's copy: pack the files that
ci.toml's `artifacts` patterns match into a tar at the path given, for the server.

    python -I -c "<this source>" OUTPUT MAX_FILES MAX_BYTES PATTERNS_JSON

A pattern is matched against each file's path relative to the project, `/`-separated, part
by part: `*` and `?` stay within a part, `**` as a whole part matches any number of parts
(`htmlcov/**`, `**/*.png`, `reports/*.xml`). Only regular files go in (no symbolic link is
followed, opened or packed); at most MAX_FILES of them and MAX_BYTES in all, in the order a
walk of the folders finds them, sorted; what does not fit is said on stdout, the job's log.

The server trusts nothing of this: the tests could have changed anything the job's user
can write, so it checks the tar on its side again (runner/artifacts.py). This only spares
it a tar larger than what it keeps. This file is not imported by the server: scripts.py
sends its source to the container. It uses nothing but the standard library.
"""

import fnmatch
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Iterator

MAX_VISITED = 200_000
"""Entries walked at most: a job that wrote millions of files does not make the walk last."""


def matches(pattern: list[str], parts: list[str]) -> bool:
    """Whether a path's `parts` match a pattern's, `**` standing for any number of parts:
    in time linear in the product of their lengths (no backtracking blow-up)."""
    # reachable[j]: the pattern's first i parts can match the path's first j parts.
    reachable = [True] + [False] * len(parts)
    for piece in pattern:
        if piece == "**":
            for j in range(1, len(parts) + 1):
                reachable[j] = reachable[j] or reachable[j - 1]
        else:
            reachable = [False] + [
                reachable[j] and fnmatch.fnmatchcase(parts[j], piece) for j in range(len(parts))
            ]
    return reachable[len(parts)]


def candidates(patterns: list[list[str]]) -> Iterator[str]:
    """The paths of the files under `.` that a pattern matches, sorted within each folder."""
    visited = 0
    for folder, folders, files in os.walk(".", followlinks=False):
        folders.sort()
        for name in sorted(files):
            visited += 1
            if visited > MAX_VISITED:
                print(f"==> Artifacts: stopped looking after {MAX_VISITED:,} files")
                return
            path = f"{folder}/{name}"[2:]  # without the leading "./"
            parts = path.split("/")
            if any(matches(pattern, parts) for pattern in patterns):
                yield path


def read_regular(path: str, at_most: int) -> tuple[bytes | None, str | None]:
    """The file's bytes if it is a regular file of at most `at_most` bytes; else why not."""
    try:
        before = os.lstat(path)
        if not stat.S_ISREG(before.st_mode):
            return None, "not a regular file"
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        return None, e.strerror or "cannot be opened"
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None, "not a regular file"
        data = file.read(at_most + 1)
    if len(data) > at_most:
        return None, "too large"
    return data, None


def main() -> int:
    output, max_files, max_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    patterns = [pattern.split("/") for pattern in json.loads(sys.argv[4])]
    kept = kept_bytes = over_count = 0
    with tarfile.open(output, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in candidates(patterns):
            if kept >= max_files:
                over_count += 1
                continue
            data, why = read_regular(path, max_bytes - kept_bytes)
            if why == "too large":
                print(f"==> Artifacts: {path} not kept: past the {max_bytes:,} bytes allowed")
                continue
            if data is None:
                print(f"==> Artifacts: {path} not kept: {why}")
                continue
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
            kept += 1
            kept_bytes += len(data)
    if over_count:
        print(f"==> Artifacts: {over_count} more file(s) not kept: past the {max_files:,} allowed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
