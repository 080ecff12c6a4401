"""`ci artifacts` writes under its folder only, and only the bytes the server listed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ci_client.downloads import UnsafeArtifact, target_of, write_checked


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "a\\..\\x", "a//b", ""])
def test_a_path_out_of_the_folder_is_refused(tmp_path: Path, path: str) -> None:
    with pytest.raises(UnsafeArtifact):
        target_of(tmp_path, path)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_is_a_link_is_not_written_through(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "htmlcov").symlink_to(outside)
    with pytest.raises(UnsafeArtifact, match="symbolic link"):
        target_of(folder, "htmlcov/index.html")


def test_a_file_is_written_whole_replacing_a_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target = target_of(
        tmp_path / "out" if (tmp_path / "out").mkdir() is None else tmp_path, "a/b.bin"
    )
    target.symlink_to(victim)
    data = bytes(range(256)) * 10
    write_checked(target, [data[:100], data[100:]], len(data), hashlib.sha256(data).hexdigest())
    assert target.read_bytes() == data
    assert not target.is_symlink()
    assert victim.read_text() == "keep me"


def test_bytes_other_than_those_listed_are_not_kept(tmp_path: Path) -> None:
    target = tmp_path / "f"
    with pytest.raises(UnsafeArtifact):
        write_checked(target, [b"evil"], 4, hashlib.sha256(b"good").hexdigest())
    with pytest.raises(UnsafeArtifact):
        write_checked(target, [b"x" * 10], 4, hashlib.sha256(b"x" * 4).hexdigest())
    assert list(tmp_path.iterdir()) == []
