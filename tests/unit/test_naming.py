"""A job's project name: given, ci.toml, packaging metadata, the directory; read from the
upload's own files, whatever shape they have."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from ci_server.runner.naming import (
    MAX_PROJECT_CHARS,
    project_name,
    upload_project_name,
    usable_name,
)
from ci_server.runner.shapes import MAX_FILE_BYTES, ProjectError
from tests.fakes import write_zip

PYPROJECT = '[project]\nname = "from-pyproject"\nversion = "1"\n'
SETUP_CFG = "[metadata]\nname = from-setup-cfg\n"
SETUP_PY = 'from setuptools import setup\nsetup(name="from-setup-py", version="1")\n'
CI_TOML = 'project = "from-ci-toml"\n'


def name_of(tmp_path: Path, files: Mapping[str, str | bytes], **options: str) -> str | None:
    """The name the server gives the upload of `files`."""
    upload = write_zip(tmp_path / "upload.zip", files)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    name = upload_project_name(upload, scratch, **options)
    assert list(scratch.iterdir()) == []  # nothing left behind
    return name


def test_the_first_source_that_names_the_project_wins(tmp_path: Path) -> None:
    every = {
        "ci.toml": CI_TOML,
        "pyproject.toml": PYPROJECT,
        "setup.cfg": SETUP_CFG,
        "setup.py": SETUP_PY,
        "tests/test_x.py": "def test_x(): pass\n",
    }
    order = ["ci.toml", "pyproject.toml", "setup.cfg", "setup.py"]
    names = ["from-ci-toml", "from-pyproject", "from-setup-cfg", "from-setup-py"]
    for n, expected in enumerate(names):
        files = {name: text for name, text in every.items() if name not in order[:n]}
        assert name_of(tmp_path, files, directory="folder") == expected
    assert name_of(tmp_path, {"tests/test_x.py": ""}, directory="folder") == "folder"
    assert name_of(tmp_path, {"tests/test_x.py": ""}) is None  # an older client sends no folder
    assert name_of(tmp_path, every, given="  chosen ", directory="folder") == "chosen"


@pytest.mark.parametrize(
    "files",
    [
        {"pyproject.toml": "[project\nname = 'x'"},  # not TOML
        {"pyproject.toml": "[project]\nname = 3\n"},  # not a string
        {"pyproject.toml": "project = 3\n"},  # [project] not a table
        {"pyproject.toml": b"\xff\xfe not utf-8"},
        {"pyproject.toml": "[project]\nname = '" + "x" * MAX_FILE_BYTES + "'\n"},  # too large
        {"pyproject.toml": "[project]\nname = '  '\n"},  # blank
        {"pyproject.toml": '[project]\nname = "a\\u001b[31mb"\n'},  # a control character
        {"pyproject.toml": f"[project]\nname = '{'x' * (MAX_PROJECT_CHARS + 1)}'\n"},
        {"ci.toml": "project = ['x']\n"},
        {"ci.toml": "unknown_key = 1\nproject = 'x'\n"},  # the job's run says what is wrong
        {"setup.cfg": "[metadata\nname"},
        {"setup.py": "setup(name=NAME)\n"},  # not a literal: never executed
        {"setup.py": "def (:\n"},
        {"sub/pyproject.toml": PYPROJECT},  # only the project's root counts
    ],
)
def test_a_file_that_gives_no_usable_name_is_passed_over(
    tmp_path: Path, files: dict[str, str | bytes]
) -> None:
    assert name_of(tmp_path, files, directory="folder") == "folder"


def test_a_given_name_that_cannot_be_one_is_refused(tmp_path: Path) -> None:
    for given in ("", "   ", "a\nb", "x" * (MAX_PROJECT_CHARS + 1)):
        with pytest.raises(ProjectError, match="printable characters"):
            name_of(tmp_path, {"pyproject.toml": PYPROJECT}, given=given)


def test_names_keep_their_spelling_without_surrounding_blanks() -> None:
    assert usable_name(" My_App.2 ") == "My_App.2"
    assert usable_name("ünï app ✓") == "ünï app ✓"
    assert usable_name("x" * MAX_PROJECT_CHARS) == "x" * MAX_PROJECT_CHARS
    assert usable_name(None) is None


def test_a_project_folder_is_named_in_place(tmp_path: Path) -> None:
    (tmp_path / "setup.cfg").write_text("[options]\npackages = find:\n")  # no name there
    (tmp_path / "setup.py").write_text(SETUP_PY)
    assert project_name(tmp_path, directory="folder") == "from-setup-py"
