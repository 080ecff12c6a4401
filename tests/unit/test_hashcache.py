"""The client's hash cache and snapshot: an unchanged file is not read again."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ci_client import contents as client_contents
from ci_client.contents import snapshot
from ci_client.hashcache import HashCache, cache_dir
from ci_common.trees import Row, TreeEntry, content_hash, decode_tree, encode_rows, encode_tree


def age(path: Path, seconds: float = 60) -> None:
    """Date the file back, out of the racy window."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("A = 1\n")
    (root / "test_a.py").write_text("def test(): pass\n")
    for path in root.rglob("*.py"):
        age(path)
    return root


def test_an_unchanged_file_is_not_read_again(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "cache" / "hashes.sqlite3"
    with HashCache(database, project) as cache:
        first = snapshot(project, cache)
    read: list[Path] = []
    real = client_contents.hash_file
    monkeypatch.setattr(client_contents, "hash_file", lambda p: read.append(p) or real(p))

    with HashCache(database, project) as cache:
        again = snapshot(project, cache)
    assert read == []
    assert again.root == first.root

    (project / "pkg" / "a.py").write_text("A = 2\n")
    age(project / "pkg" / "a.py", 30)
    with HashCache(database, project) as cache:
        changed = snapshot(project, cache)
    assert read == [project / "pkg" / "a.py"]
    assert changed.root != first.root


def test_a_file_changed_just_now_is_not_cached(project: Path, tmp_path: Path) -> None:
    database = tmp_path / "hashes.sqlite3"
    (project / "fresh.py").write_text("x = 1\n")
    with HashCache(database, project) as cache:
        snapshot(project, cache)
    with HashCache(database, project) as cache:
        snapshot(project, cache)
        assert cache.hits == 2  # the two old files, not the fresh one


def test_a_damaged_cache_means_hashing_everything(project: Path, tmp_path: Path) -> None:
    database = tmp_path / "hashes.sqlite3"
    database.write_bytes(b"not sqlite")
    with HashCache(database, project) as cache:
        snap = snapshot(project, cache)
    assert snap.file_count == 2


def test_the_snapshot_is_a_tree_per_folder(project: Path, tmp_path: Path) -> None:
    (project / "pkg" / "a.py").chmod(0o755)
    with HashCache(tmp_path / "h.sqlite3", project) as cache:
        snap = snapshot(project, cache)
    root = decode_tree(snap.trees[snap.root])
    assert [(e.name, e.kind) for e in root] == [("pkg", "dir"), ("test_a.py", "file")]
    pkg = decode_tree(snap.trees[root[0].hash])
    assert [(e.name, e.hash, e.executable) for e in pkg] == [
        ("a.py", content_hash(b"A = 1\n"), True)
    ]
    assert (snap.file_count, snap.total_bytes) == (2, len("A = 1\n") + len("def test(): pass\n"))


def test_the_cache_lives_under_xdg_cache_home_or_ci_cache_dir() -> None:
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/ci")
    assert cache_dir({"CI_CACHE_DIR": "/y", "XDG_CACHE_HOME": "/x"}) == Path("/y")


def test_a_folder_encoded_from_rows_is_byte_for_byte_its_tree() -> None:
    a, b = content_hash(b"a"), content_hash(b"b")
    entries = [
        TreeEntry("zé.py", "file", a, 1, True),
        TreeEntry("pkg", "dir", b),
        TreeEntry("A", "file", b, 0, False),
    ]
    rows: list[Row] = [("zé.py", "f", a, 1, 1), ("pkg", "d", b), ("A", "f", b, 0, 0)]
    assert encode_rows(rows) == encode_tree(entries)
    assert [row[0] for row in rows] == ["A", "pkg", "zé.py"]  # sorted in place
