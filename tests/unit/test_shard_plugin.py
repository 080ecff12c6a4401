"""The shard plugin (runner/shard_plugin.py): how a suite is split, and the plugin itself in
real pytest processes, one per shard, as the shards of a group run it."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ci_server.runner import scripts, shard_plugin
from ci_server.runner.shard_plugin import split

TESTS = [f"tests/test_{file}.py::test_{n}" for file in "abcd" for n in range(10)]


def balance(weights: list[float]) -> float:
    return max(weights) / (sum(weights) / len(weights))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 40, 50])
def test_every_test_is_in_exactly_one_shard(count: int) -> None:
    durations = {node_id: random.Random(node_id).uniform(0, 3) for node_id in TESTS[::3]}
    shards = split(TESTS, durations, count).shards
    assert len(shards) == count
    assert sorted(node_id for shard in shards for node_id in shard) == sorted(TESTS)


def test_the_split_does_not_depend_on_the_collection_order() -> None:
    durations = {node_id: 1.0 + (i % 5) for i, node_id in enumerate(TESTS[:30])}
    shuffled = TESTS[:]
    random.Random(7).shuffle(shuffled)
    assert split(shuffled, durations, 4) == split(TESTS, durations, 4)
    assert split(shuffled, {}, 4) == split(TESTS, {}, 4)


def test_longest_first_into_the_lightest_shard() -> None:
    durations = {"t::a": 5.0, "t::b": 4.0, "t::c": 3.0, "t::d": 3.0, "t::e": 2.0, "t::f": 1.0}
    parts = split(list(durations), durations, 2)
    # a -> 0 (5), b -> 1 (4), c -> 1 (7), d -> 0 (8), e -> 1 (9), f -> 0 (9)
    assert parts.shards == [["t::a", "t::d", "t::f"], ["t::b", "t::c", "t::e"]]
    assert parts.weights == [9.0, 9.0]
    assert parts.by_duration


def test_a_test_without_history_weighs_the_median() -> None:
    durations = {"t::a": 1.0, "t::b": 2.0, "t::c": 9.0}
    parts = split(["t::a", "t::b", "t::c", "t::new"], durations, 2)
    assert parts.median == 2.0
    assert parts.known == 3
    assert sorted(parts.weights) == [5.0, 9.0]  # new (2) with a (1) and b (2); c alone


def test_tests_recorded_at_zero_seconds_still_spread() -> None:
    parts = split(TESTS, dict.fromkeys(TESTS, 0.0), 4)
    assert [len(shard) for shard in parts.shards] == [10, 10, 10, 10]


def test_without_history_a_files_tests_stay_together() -> None:
    parts = split(TESTS, {}, 4)
    assert not parts.by_duration
    files = [{node_id.split("::")[0] for node_id in shard} for shard in parts.shards]
    assert sorted(len(f) for f in files) == [1, 1, 1, 1]
    assert parts.weights == [10.0] * 4


def test_without_history_a_file_bigger_than_a_share_is_cut() -> None:
    one_file = [f"test_all.py::test_{n:02}" for n in range(40)]
    parts = split(one_file, {}, 4)
    assert [len(shard) for shard in parts.shards] == [10, 10, 10, 10]
    assert parts.shards[0] == one_file[:10]  # in node id order: a file's pieces in a row


def test_with_history_uneven_tests_balance_well() -> None:
    rng = random.Random(1)
    durations = {node_id: rng.expovariate(1.0) for node_id in TESTS}
    assert balance(split(TESTS, durations, 4).weights) < 1.1


# -- the plugin in real pytest processes ------------------------------------------------------


def test_the_job_script_names_the_plugins_option() -> None:
    assert scripts.SHARD_OPTION == shard_plugin.SHARD_OPTION


def write_suite(root: Path, failing: str | None = None) -> list[str]:
    """Four modules of five tests each; `failing` names one that fails."""
    node_ids = []
    for module in ("test_one", "test_two", "test_three", "test_four"):
        lines = []
        for n in range(5):
            name = f"test_{n}"
            fails = f"{module}.py::{name}" == failing
            lines.append(f"def {name}():\n    assert {not fails}\n")
            node_ids.append(f"{module}.py::{name}")
        (root / f"{module}.py").write_text("\n".join(lines))
    return node_ids


def run_shard(
    root: Path, index: int, count: int, durations: dict[str, float]
) -> tuple[int, list[str], str]:
    """pytest's status, the tests in its report and its output, for one shard."""
    shard = root.parent / f"shard-{index}.json"
    collected = root.parent / f"collected-{index}.json"
    shard.write_text(
        json.dumps(
            {"index": index, "count": count, "durations": durations, "collected": str(collected)}
        )
    )
    report = root.parent / f"junit-{index}.xml"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "ci_server.runner.shard_plugin"),
            *(f"--ci-shard={shard}", f"--junitxml={report}", "-p", "no:cacheprovider"),
            *("-p", "no:randomly"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    ran = [
        f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        for case in ET.parse(report).iter("testcase")
    ]
    return done.returncode, ran, done.stdout


@pytest.mark.parametrize("with_history", [False, True])
def test_shards_run_every_test_exactly_once(tmp_path: Path, with_history: bool) -> None:
    root = tmp_path / "project"
    root.mkdir()
    node_ids = write_suite(root, failing="test_three.py::test_2")
    durations = {node_id: 0.1 * (i % 7) for i, node_id in enumerate(node_ids[:15])}
    results = [run_shard(root, i, 3, durations if with_history else {}) for i in (1, 2, 3)]

    ran = [node_id for _, shard, _ in results for node_id in shard]
    assert sorted(ran) == sorted(node_ids)
    failed = [status for status, shard, _ in results if "test_three.py::test_2" in shard]
    assert failed == [1]  # only the shard that ran the failing test fails
    assert sorted(status for status, _, _ in results) == [0, 0, 1]
    said = "by recorded durations (15 of 20 known" if with_history else "split by file"
    assert all(said in output for _, _, output in results)
    assert f"Shard 2 of 3: {len(results[1][1])} of 20 tests" in results[1][2]


def test_a_shard_left_with_nothing_passes(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "test_only.py").write_text("def test_a():\n    pass\n")
    statuses = [run_shard(root, i, 2, {})[0] for i in (1, 2)]
    assert statuses == [0, 0]


def test_the_fingerprint_is_the_set_of_node_ids() -> None:
    ids = [f"test_a.py::test_{n}" for n in range(10)]
    said = shard_plugin.fingerprint(ids)
    assert said["tests"] == 10
    assert said == shard_plugin.fingerprint(random.sample(ids, len(ids)) + ids[:3])
    assert said != shard_plugin.fingerprint(ids[:9])
    assert said != shard_plugin.fingerprint([*ids[:9], "test_a.py::test_x"])
    # A file name's undecodable bytes, as Python keeps them, hash too.
    assert shard_plugin.fingerprint(["test_\udcff.py::test_a"])["tests"] == 1


def test_every_shard_says_what_it_collected_before_its_split(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    node_ids = write_suite(root)
    for index in (1, 2, 3):
        run_shard(root, index, 3, {})
    said = [json.loads((tmp_path / f"collected-{i}.json").read_text()) for i in (1, 2, 3)]
    assert said == [shard_plugin.fingerprint(node_ids)] * 3
    assert said[0]["tests"] == 20
