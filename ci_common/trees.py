"""Content-addressed uploads: what the client and the server must encode alike.

A project is sent as a tree of contents, as git keeps one: every file's bytes are a blob
named by their SHA-256, and every folder is a *tree*, a blob too, that lists its entries
(name, kind, hash; a file's size and executable bit) in one canonical encoding. The hash
of the root tree names the whole project: an unchanged folder costs one hash, whatever it
holds, and two projects with the same files have the same root.

SHA-256, not BLAKE3: hashlib has it (no dependency for the client, this module stays
standard library only), OpenSSL runs it at about 1 GB/s here, and the client's cache of
hashes (ci_client/hashcache.py) means an unchanged file is not hashed again anyway, so
only new bytes are hashed.

Blobs travel in batches: a zstd stream of records, each a header line
`<hash> <size>\\n` and then `size` bytes (`record_header`, `parse_record_header`).

This module checks shapes only (types, hash syntax); the rules for names, counts and
sizes are the server's (ci_server/runner/workspace.py), the same as for zip uploads.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Literal

HASH_CHARS = 64
READ_CHUNK = 1024 * 1024
_HASH = re.compile(r"[0-9a-f]{64}")
_HEX_DIGITS = b"0123456789abcdef"
TREE_FORMAT = "ci-tree-1"
BATCH_MEDIA_TYPE = "application/x-ci-blobs+zstd"
MAX_HEADER_BYTES = HASH_CHARS + 1 + 20 + 1
"""The longest record header: a hash, a space, a size of up to 20 digits, a newline."""

Kind = Literal["file", "dir"]


class BadTree(ValueError):
    """Bytes that are not a tree in the canonical encoding, or a malformed record header."""


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


new_hasher = hashlib.sha256
"""A hash in progress, for bytes that come in pieces (`content_hash` of them all)."""


def hash_file(path: Path) -> str:
    """`content_hash` of a file's bytes, read in pieces."""
    hasher = new_hasher()
    with path.open("rb") as file:
        while chunk := file.read(READ_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def is_hash(text: object) -> bool:
    return isinstance(text, str) and _HASH.fullmatch(text) is not None


def are_hashes(texts: list[object]) -> bool:
    """Whether every one of `texts` is a content hash: their characters checked at once,
    joined (a manifest's 20,000 hashes; one `is_hash` each took 0.01 s)."""
    if not all(isinstance(text, str) and len(text) == HASH_CHARS for text in texts):
        return False
    joined = "".join(texts).encode("utf-8", "surrogatepass")  # type: ignore[arg-type]
    return not joined.translate(None, _HEX_DIGITS)


@dataclass(frozen=True, slots=True)
class TreeEntry:
    name: str
    kind: Kind
    hash: str
    size: int = 0
    """A file's size in bytes; 0 for a folder."""
    executable: bool = False


FileRow = tuple[str, Literal["f"], str, int, int]
"""A file as a tree encodes it: name, "f", hash, size, executable (0 or 1)."""
DirRow = tuple[str, Literal["d"], str]
"""A folder as a tree encodes it: name, "d", hash."""
Row = FileRow | DirRow


def encode_tree(entries: list[TreeEntry]) -> bytes:
    """The canonical bytes of a folder: entries sorted by name, compact JSON, UTF-8."""
    return encode_rows([_row(entry) for entry in entries])


def encode_rows(rows: list[Row]) -> bytes:
    """`encode_tree` of entries given as rows (JSON writes a tuple as a list): what the
    client builds for thousands of files (a TreeEntry cost 0.4 us, a tuple 0.03). Sorts
    `rows` by name, in place."""
    rows.sort(key=itemgetter(0))
    document = {"format": TREE_FORMAT, "entries": rows}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _row(entry: TreeEntry) -> Row:
    if entry.kind == "file":
        return (entry.name, "f", entry.hash, entry.size, int(entry.executable))
    return (entry.name, "d", entry.hash)


def decode_tree(data: bytes) -> list[TreeEntry]:
    """The entries of a tree's bytes; BadTree unless they are exactly `encode_tree`'s."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise BadTree(f"not a tree: {e}") from None
    if not isinstance(document, dict) or document.get("format") != TREE_FORMAT:
        raise BadTree(f"not a tree: no {TREE_FORMAT!r} format")
    rows = document.get("entries")
    if not isinstance(rows, list):
        raise BadTree("not a tree: no list of entries")
    entries = [_entry(row) for row in rows]
    if len({entry.name for entry in entries}) != len(entries):
        raise BadTree("a tree names an entry twice")
    try:
        canonical = encode_tree(entries)
    except UnicodeEncodeError:  # a name with a lone surrogate (`"\\ud800"`): no UTF-8
        raise BadTree("a tree's names must be UTF-8") from None
    if canonical != data:
        raise BadTree("a tree must be in the canonical encoding (sorted, compact)")
    return entries


def _entry(row: object) -> TreeEntry:
    if isinstance(row, list) and len(row) == 5 and row[1] == "f":
        name, _, hash_, size, executable = row
        if (
            isinstance(name, str)
            and is_hash(hash_)
            and type(size) is int
            and size >= 0
            and executable in (0, 1)
        ):
            return TreeEntry(name, "file", hash_, size, bool(executable))
    if isinstance(row, list) and len(row) == 3 and row[1] == "d":
        name, _, hash_ = row
        if isinstance(name, str) and is_hash(hash_):
            return TreeEntry(name, "dir", hash_)
    raise BadTree(f"not a tree entry: {str(row)[:200]!r}")


def record_header(hash_: str, size: int) -> bytes:
    return f"{hash_} {size}\n".encode()


def parse_record_header(line: bytes) -> tuple[str, int]:
    """The hash and size of a record header (with its newline); BadTree otherwise."""
    parts = line.rstrip(b"\n").split(b" ")
    if len(parts) != 2 or not line.endswith(b"\n") or not parts[1].isdigit():
        raise BadTree(f"not a record header: {line[:MAX_HEADER_BYTES]!r}")
    hash_ = parts[0].decode("ascii", errors="replace")
    if not is_hash(hash_):
        raise BadTree(f"not a record header: {line[:MAX_HEADER_BYTES]!r}")
    return hash_, int(parts[1])
