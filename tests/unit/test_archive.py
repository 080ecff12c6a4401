"""Which files `ci submit` sends, and how they are zipped."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from pathspec import GitIgnoreSpec

from ci_client.archive import (
    _any_ignoring,
    _IgnoreFile,
    build_archive,
    iter_project_files,
    iter_project_folders,
)


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


def test_gitignore_files_are_followed(tmp_path: Path) -> None:
    root_rules = "*.log\n!keep.log\n/build-*/\ndocs/_build/\nsecret[0-9].txt\n# a comment\n"
    files = {
        ".gitignore": root_rules,
        "a.log": "",
        "keep.log": "",
        "b.py": "",
        "build-x/out.txt": "",
        "src/build-x/kept.txt": "",
        "docs/_build/page.html": "",
        "docs/index.md": "",
        "secret1.txt": "",
        "secretA.txt": "",
        "pkg/.gitignore": "*.dat\n!/keep.dat\n",
        "pkg/keep.dat": "",
        "pkg/deep/keep.dat": "",
        "pkg/x.dat": "",
        "pkg/deep/m.log": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)

    sent = sorted(relative for relative, _ in iter_project_files(tmp_path))

    assert sent == [
        ".gitignore",
        "b.py",
        "docs/index.md",
        "keep.log",
        "pkg/.gitignore",
        "pkg/keep.dat",
        "secretA.txt",
        "src/build-x/kept.txt",
    ]


PATTERNS = [
    "*.py[cod]",
    "__pycache__/",
    "/dist",
    "build/",
    "**/tmp/**",
    "a/**/b",
    "*.egg-info/",
    "!important.pyc",
    "docs/_build/",
    "\\#literal",
    "x?y",
    ".env",
]
PATHS = [
    "m.pyc",
    "pkg/m.pyo",
    "important.pyc",
    "pkg/important.pyc",
    "__pycache__/",
    "pkg/__pycache__/m.pyc",
    "dist/",
    "pkg/dist/",
    "build/",
    "pkg/build/x",
    "tmp/x",
    "a/tmp/y/z",
    "a/b",
    "a/c/d/b",
    "x.egg-info/",
    "docs/_build/",
    "(",
    "x",
    "#literal",
    "xzy",
    "x/y",
    ".env",
    "pkg/.env/",
    "keep.py",
]


@pytest.mark.parametrize(
    ("lines", "joined"),
    [
        (PATTERNS, True),
        (PATTERNS[:3], True),
        ([*PATTERNS, "[(?P<x>]"], False),  # a group's text in a [...]: not joined
        (["!x"], False),
        ([], False),
        (["# only a comment"], False),
    ],
)
def test_the_quick_check_of_ignore_rules_answers_as_pathspec(
    lines: list[str], joined: bool
) -> None:
    spec = GitIgnoreSpec.from_lines(lines)
    assert (_any_ignoring(spec) is not None) == joined
    rules = _IgnoreFile("", spec)
    assert [rules.ignores(path) for path in [*PATHS, "(", "P"]] == [
        spec.match_file(path) for path in [*PATHS, "(", "P"]
    ]


def test_the_files_come_a_folder_at_a_time_parents_first(tmp_path: Path) -> None:
    for name in ["b.py", "pkg/z.py", "pkg/a.py", "pkg/sub/c.py", "only/deeper/d.py", ".venv/e.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / ".gitignore").write_text("sub/\n")

    folders = [
        (folder, [name for name, _ in files]) for folder, files in iter_project_folders(tmp_path)
    ]

    assert folders == [
        ("", [".gitignore", "b.py"]),
        ("only", []),  # a folder of folders
        ("only/deeper", ["d.py"]),
        ("pkg", ["a.py", "z.py"]),  # sorted; pkg/sub is ignored, .venv always left out
    ]
