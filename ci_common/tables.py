"""Tables of plain text, as `ci list` and `ci-admin` print them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import SupportsWrite


def local_time(value: datetime | None) -> str:
    """A time in the local time zone, to the second; `-` for none."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], out: SupportsWrite[str]
) -> None:
    """Columns as wide as their widest cell, two spaces apart."""
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    for row in (headers, *rows):
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip(),
            file=out,
        )
