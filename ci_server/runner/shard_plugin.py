"""Runs in the container, as a pytest plugin: keep the job's shard of the collected tests,
deselect the rest.

Every shard of a group collects the whole suite itself and reads the same durations (the
server's, in the file `--ci-shard` names), so every shard computes the same split and keeps
its own part: each test runs in exactly one shard. The split depends on the set of node ids
alone, not on the order pytest collected them in (pytest-randomly shuffles it differently in
each shard):

- with recorded durations, each test weighs its latest recorded duration, and one with none
  the median of those; tests, heaviest first (ties by node id), go one by one into the
  lightest shard (ties: the first);
- with none (the project's first sharded run), each test weighs the same and the tests of a
  file stay together: files, biggest first, into the lightest shard; a file bigger than a
  shard's share is cut into pieces of that share, in node id order.

It runs last (trylast), so it splits what the other plugins kept (`--lf`, `-k`, `-m`).

Each shard also says what it collected, before keeping its part: how many tests and the
SHA-256 of their sorted node ids, as JSON in the file the shard's `collected` names (the
server's, /ci-output/collected.json). The server compares the shards': a suite whose
collection differs between containers (ids from random, the time, the host name) is split
differently by each, and then tests run twice or never (groups.py: collection_problems).

This file is not imported by the server: scheduler.py sends its source to the container
(as SHARD_MODULE, README: "Shards" says why this, not pytest-split). It uses nothing but
the standard library and pytest.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SHARD_OPTION = "--ci-shard"
MIN_WEIGHT = 0.001
"""A test's least weight, in seconds: tests recorded at 0 s still spread over the shards."""


@dataclass(frozen=True, slots=True)
class Split:
    shards: list[list[str]]
    """The node ids of each shard, in node id order within a unit."""
    weights: list[float]
    """Each shard's expected seconds (with durations) or tests (without)."""
    by_duration: bool
    known: int
    """How many of the tests have a recorded duration."""
    median: float


def split(node_ids: Sequence[str], durations: Mapping[str, float], count: int) -> Split:
    """`node_ids` in `count` shards, balanced by `durations` (node id -> seconds)."""
    unique = sorted(set(node_ids))
    known = [durations[node_id] for node_id in unique if node_id in durations]
    median = statistics.median(known) if known else 0.0
    if known:
        units = [
            (max(durations.get(node_id, median), MIN_WEIGHT), node_id, [node_id])
            for node_id in unique
        ]
    else:
        units = _files(unique, count)
    units.sort(key=lambda unit: (-unit[0], unit[1]))
    shards: list[list[str]] = [[] for _ in range(count)]
    weights = [0.0] * count
    lightest = [(0.0, index) for index in range(count)]
    for weight, _, tests in units:
        load, index = heapq.heappop(lightest)
        shards[index] += tests
        weights[index] = load + weight
        heapq.heappush(lightest, (weights[index], index))
    return Split(shards, weights, bool(known), len(known), median)


def _files(node_ids: list[str], count: int) -> list[tuple[float, str, list[str]]]:
    """Units of a test's weight each: a file's tests together, in pieces of a shard's share."""
    files: dict[str, list[str]] = {}
    for node_id in node_ids:
        files.setdefault(node_id.split("::", 1)[0], []).append(node_id)
    share = max(1, math.ceil(len(node_ids) / count))
    return [
        (float(len(tests[start : start + share])), tests[start], tests[start : start + share])
        for tests in files.values()
        for start in range(0, len(tests), share)
    ]


def fingerprint(node_ids: Iterable[str]) -> dict[str, object]:
    """What a shard collected, to compare with the other shards': how many tests, and the
    SHA-256 of their node ids, sorted, one a line (UTF-8; a file name's undecodable bytes
    as Python keeps them)."""
    unique = sorted(set(node_ids))
    text = "\n".join(unique).encode("utf-8", "surrogatepass")
    return {"tests": len(unique), "sha256": hashlib.sha256(text).hexdigest()}


def _say_collected(path: object, node_ids: Iterable[str]) -> None:
    """Write the fingerprint where the server reads it; nowhere if it names no file (the
    server then says the shard did not tell)."""
    if not isinstance(path, str) or not path:
        return
    with contextlib.suppress(OSError), Path(path).open("w", encoding="utf-8") as file:
        json.dump(fingerprint(node_ids), file)


_EMPTY_SHARD = pytest.StashKey[bool]()
_SAID = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        SHARD_OPTION,
        metavar="FILE",
        help="run one shard: FILE holds index (from 1), count and durations (JSON)",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption(SHARD_OPTION)
    if not path:
        return
    shard = json.loads(Path(path).read_text(encoding="utf-8"))
    index, count = int(shard["index"]), int(shard["count"])
    _say_collected(shard.get("collected"), (item.nodeid for item in items))
    parts = split([item.nodeid for item in items], shard["durations"], count)
    mine = set(parts.shards[index - 1])
    kept = [item for item in items if item.nodeid in mine]
    dropped = [item for item in items if item.nodeid not in mine]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
    config.stash[_EMPTY_SHARD] = bool(dropped) and not kept
    collected = len(items) + len(dropped)
    how = _how(parts, index)
    config.stash[_SAID] = f"Shard {index} of {count}: {len(kept)} of {collected} tests, {how}"


def _how(parts: Split, index: int) -> str:
    if not parts.by_duration:
        return "split by file (no durations recorded yet)"
    tests = sum(len(shard) for shard in parts.shards)
    unknown = "" if parts.known == tests else f"; the others count {parts.median:.2f} s, the median"
    return (
        f"about {parts.weights[index - 1]:.1f} s of {sum(parts.weights):.1f} s by recorded "
        f"durations ({parts.known} of {tests} known{unknown})"
    )


def pytest_report_collectionfinish(config: pytest.Config) -> str | None:
    return config.stash.get(_SAID, None)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A shard left with no test passes: the others ran them all (pytest says 5, none ran)."""
    empty = session.config.stash.get(_EMPTY_SHARD, False)
    if empty and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK
