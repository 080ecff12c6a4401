"""What an artifact's path may be: the server keeps only such paths (a job's files are
hostile), and `ci artifacts` writes only such paths under its folder (a server could be)."""

from __future__ import annotations

MAX_PATH_CHARS = 1024
MAX_PART_BYTES = 255


def safe_path(name: str) -> str | None:
    """`name` if it can be an artifact's path: relative, `/`-separated plain names (no
    `..`, `.` or empty part, no backslash, no control character), at most MAX_PATH_CHARS;
    None otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_PATH_CHARS:
        return None
    if name.startswith("/") or "\\" in name:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return None
    for part in name.split("/"):
        if part in ("", ".", "..") or len(part.encode("utf-8", "surrogateescape")) > MAX_PART_BYTES:
            return None
    return name
