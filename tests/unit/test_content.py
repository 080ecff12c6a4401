"""The digest of what a job tested: the same files give the same digest, however zipped."""

from __future__ import annotations

import zipfile
from pathlib import Path

from ci_common.trees import content_hash as content_hash_of
from ci_server.runner.content import content_hash, files_digest, project_digest
from ci_server.runner.workspace import ArchiveLimits, unpack_archive

LIMITS = ArchiveLimits()
FILES = {"pkg/__init__.py": b"", "tests/test_a.py": b"def test_a(): pass\n", "run.sh": b"echo\n"}


Stamp = tuple[int, int, int, int, int, int]
Entry = tuple[str, bytes, int, Stamp]


def unpacked(tmp_path: Path, name: str, entries: list[Entry]) -> str:
    """The digest of a zip of `entries` (path, bytes, unix mode, timestamp), once unpacked."""
    archive = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path, data, mode, stamp in entries:
            info = zipfile.ZipInfo(path, date_time=stamp)
            info.external_attr = mode << 16
            zipped.writestr(info, data)
    unpack_archive(archive, tmp_path / name, LIMITS)
    return project_digest(tmp_path / name)


def entries(stamp: Stamp = (2020, 1, 1, 0, 0, 0)) -> list[Entry]:
    return [(path, data, 0o644, stamp) for path, data in FILES.items()]


def test_the_same_files_give_the_same_digest_whatever_their_order_and_timestamps(
    tmp_path: Path,
) -> None:
    first = unpacked(tmp_path, "a", entries())
    again = unpacked(tmp_path, "b", list(reversed(entries((2024, 6, 30, 12, 0, 0)))))
    assert first == again


def test_changed_content_or_executable_bit_or_name_change_the_digest(tmp_path: Path) -> None:
    first = unpacked(tmp_path, "a", entries())
    edited = [(p, d + b"#", m, s) if p == "run.sh" else (p, d, m, s) for p, d, m, s in entries()]
    executable = [(p, d, 0o755, s) if p == "run.sh" else (p, d, m, s) for p, d, m, s in entries()]
    renamed = [("run2.sh" if p == "run.sh" else p, d, m, s) for p, d, m, s in entries()]
    digests = {
        first,
        unpacked(tmp_path, "edited", edited),
        unpacked(tmp_path, "executable", executable),
        unpacked(tmp_path, "renamed", renamed),
    }
    assert len(digests) == 4


def test_the_content_hash_depends_on_the_files_and_the_environment() -> None:
    hashes = {
        content_hash("files", "env"),
        content_hash("files", "env2"),
        content_hash("f2", "env"),
    }
    assert len(hashes) == 3
    assert content_hash("files", "env") == content_hash("files", "env")


def test_a_zip_and_a_manifest_of_the_same_files_give_the_same_digest(tmp_path: Path) -> None:
    """A project sent as contents gets its digest from its manifest, without reading its
    files: the same as the same files zipped, so jobs from either count as the same code."""
    modes = {"run.sh": 0o755}
    zipped = unpacked(tmp_path, "zip", [(p, d, modes.get(p, 0o644), s) for p, d, _, s in entries()])
    manifest = [
        (path, path in modes, len(data), content_hash_of(data)) for path, data in FILES.items()
    ]
    assert files_digest(manifest) == zipped
