"""How a size in bytes is shown to a person: by `ci` and on the dashboard."""

from __future__ import annotations


def format_size(size: float) -> str:
    """`848 B`, `1.2 MB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
