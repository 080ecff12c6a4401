"""What a shard says it collected: the fingerprint its plugin (shard_plugin.py) left in the
job's output folder, which the server compares with the other shards' (groups.py).

Hostile, like the report: the tests could write anything there, or nothing. It is opened
without following a link, regular files only (regular_files.py), read up to MAX_BYTES and
taken only in the plugin's exact shape (a count and 64 hex digits); anything else is
CollectedUnknown, which the group treats as a shard that did not say: a forged or broken
one can make the group warn, never hide what the others say. Blocking: run it in a thread.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ci_server.runner.executor import COLLECTED_NAME
from ci_server.runner.regular_files import NotRegularFile, open_regular

MAX_BYTES = 1024
"""The plugin writes about 90 bytes; the tests could make the file 1 GiB."""
MAX_TESTS = 10**9
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class CollectedUnknown(Exception):
    """The shard left no fingerprint, or one not in the plugin's shape; the message says."""


@dataclass(frozen=True, slots=True)
class Collected:
    tests: int
    """How many tests the shard collected (all shards', before it kept its own)."""
    sha256: str
    """The SHA-256 of their sorted node ids (shard_plugin.fingerprint)."""


def read_collected(folder: Path) -> Collected:
    """The fingerprint in `folder`; CollectedUnknown when there is none fit to compare."""
    try:
        file = open_regular(folder, COLLECTED_NAME)
    except NotRegularFile as e:
        raise CollectedUnknown(str(e)) from None
    if file is None:
        raise CollectedUnknown("it left none")
    with file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CollectedUnknown(f"it is more than {MAX_BYTES:,} bytes")
    try:
        said = json.loads(data)
    except ValueError:  # not UTF-8 or not JSON
        raise CollectedUnknown("it is not JSON") from None
    if not isinstance(said, dict):
        raise CollectedUnknown("it is not the plugin's")
    tests, sha256 = said.get("tests"), said.get("sha256")
    if type(tests) is not int or not 0 <= tests <= MAX_TESTS:
        raise CollectedUnknown("its count of tests is not one")
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise CollectedUnknown("its SHA-256 is not 64 hex digits")
    return Collected(tests, sha256)
