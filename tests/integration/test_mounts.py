"""mount(2) and /proc/self/mountinfo through runner/mounts.py, for real (as root, as the
worker that mounts its jobs' /tmp runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci_server.runner import mounts


def test_mounts_under_a_folder_are_listed_deepest_first_and_all_unmounted(
    tmp_path: Path,
) -> None:
    outer = tmp_path / "a folder\twith\\odd names"
    inner = outer / "inner"
    outer.mkdir()
    mounts.mount("test", outer, "tmpfs", "size=1m")
    inner.mkdir()
    mounts.mount("test", inner, "tmpfs", "size=1m")
    assert mounts.mounts_under(tmp_path) == [inner.resolve(), outer.resolve()]
    mounts.unmount_all_under(tmp_path)
    assert mounts.mounts_under(tmp_path) == []
    assert not inner.exists()  # the folder under the tmpfs went with it


def test_a_failed_mount_is_an_os_error_naming_the_target(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="missing") as raised:
        mounts.mount("test", tmp_path / "missing", "tmpfs", "size=1m")
    assert raised.value.errno == 2
