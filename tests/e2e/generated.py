"""A generated project of many files (uploads that send only what changed: e2e and bench).

`make_project(root, files, total_bytes)`: `files` data files of random bytes in folders of
100, and a test that checks the project against `expect.json` (which files exist, are
empty, are executable, and the bytes of some): whatever a submit changes, the job passes
only if the tests saw exactly that change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TEST = """
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECT = json.loads((ROOT / "expect.json").read_text())


def test_the_files_are_as_sent():
    for name in EXPECT["absent"]:
        assert not (ROOT / name).exists(), name
    for name, text in EXPECT["text"].items():
        assert (ROOT / name).read_text() == text, name
    for name in EXPECT["empty"]:
        assert (ROOT / name).stat().st_size == 0, name
    for name in EXPECT["executable"]:
        assert os.access(ROOT / name, os.X_OK), name
    assert sum(1 for p in ROOT.rglob("*.bin")) == EXPECT["bin_files"]
"""


PYPROJECT = '[project]\nname = "generated"\nversion = "0"\n'


def make_project(root: Path, files: int, total_bytes: int) -> dict[str, Any]:
    """Write the project under `root`; the expectations it starts with (see `expect`)."""
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_project.py").write_text(TEST)
    (root / "pyproject.toml").write_text(PYPROJECT)
    size = max(1, total_bytes // files)
    for n in range(files):
        folder = root / "data" / f"d{n // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{n:05d}.bin").write_bytes(os.urandom(size))
    (root / "data" / "note.txt").write_text("first\n")
    expected = {
        "absent": [],
        "text": {"data/note.txt": "first\n"},
        "empty": [],
        "executable": [],
        "bin_files": files,
    }
    expect(root, expected)
    return expected


def expect(root: Path, expected: dict[str, Any]) -> None:
    (root / "expect.json").write_text(json.dumps(expected, indent=1))


def data_file(n: int) -> str:
    return f"data/d{n // 100:04d}/f{n:05d}.bin"
