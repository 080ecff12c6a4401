"""Which files `ci submit` sends, and how they are zipped."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from ci_client.archive import build_archive


def test_a_file_dated_before_1980_is_zipped_as_of_1980(tmp_path: Path) -> None:
    # Reproducible builds date files to 1970: flit's sdists do so for PKG-INFO.
    project = tmp_path / "project"
    project.mkdir()
    (project / "PKG-INFO").write_text("Name: old\n")
    os.utime(project / "PKG-INFO", (0, 0))
    archive = tmp_path / "project.zip"

    summary = build_archive(project, archive)

    assert summary.files == 1
    with zipfile.ZipFile(archive) as zipped:
        (info,) = zipped.infolist()
        assert (info.filename, info.date_time[0]) == ("PKG-INFO", 1980)
        assert zipped.read("PKG-INFO") == b"Name: old\n"
