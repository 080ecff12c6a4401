"""Uploaded zips: untrusted input, checked and unpacked without escaping the workspace."""

from __future__ import annotations

import io
import re
import stat
import uuid
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ci_server.models import InvalidUpload
from ci_server.runner.workspace import ArchiveLimits, check_archive, give_to, unpack_archive
from tests.fakes import write_zip

LIMITS = ArchiveLimits()


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def zip_with_entry(path: Path, info: zipfile.ZipInfo, content: bytes = b"data") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("requirements.txt", "pytest\n")
        archive.writestr(info, content)
    return path


def assert_refused(
    archive: Path, tmp_path: Path, limits: ArchiveLimits, message: str
) -> InvalidUpload:
    """Both the check and the unpack refuse the archive, and nothing at all is written."""
    before = tree(tmp_path)
    with pytest.raises(InvalidUpload, match=message):
        check_archive(archive, limits)
    with pytest.raises(InvalidUpload, match=message) as raised:
        unpack_archive(archive, tmp_path / "work" / "src", limits)
    assert tree(tmp_path) == before
    return raised.value


def test_project_unpacks_with_content_intact(tmp_path: Path) -> None:
    binary = bytes(range(256)) * 40
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("requirements.txt", "pytest\nrequests==2.32.3\n")
        zf.writestr("src/pkg/__init__.py", "VALUE = 'ünïcode'\n")
        zf.writestr("tests/", "")  # a directory entry
        zf.writestr("tests/test_pkg.py", "def test_value():\n    assert True\n")
        zf.writestr("data/blob.bin", binary)
        script = zipfile.ZipInfo("scripts/run.sh")
        script.external_attr = (stat.S_IFREG | 0o755) << 16
        zf.writestr(script, "#!/bin/sh\necho hi\n")
        private = zipfile.ZipInfo("private.txt")
        private.external_attr = (stat.S_IFREG | 0o600) << 16
        zf.writestr(private, "secret")

    assert check_archive(archive, LIMITS) == 6  # files only, not the directory entry
    destination = tmp_path / "work" / "src"
    unpack_archive(archive, destination, LIMITS)

    assert (destination / "requirements.txt").read_text() == "pytest\nrequests==2.32.3\n"
    assert (destination / "src/pkg/__init__.py").read_text() == "VALUE = 'ünïcode'\n"
    assert (destination / "data/blob.bin").read_bytes() == binary
    assert (destination / "tests").is_dir()
    assert tree(destination) == {
        "requirements.txt",
        "src",
        "src/pkg",
        "src/pkg/__init__.py",
        "tests",
        "tests/test_pkg.py",
        "data",
        "data/blob.bin",
        "scripts",
        "scripts/run.sh",
        "private.txt",
    }
    # Readable by the container's unprivileged user; executables stay executable.
    assert stat.S_IMODE((destination / "scripts/run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((destination / "private.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((destination / "src/pkg").stat().st_mode) == 0o755


def test_unpack_refuses_an_existing_destination(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "p.zip", {"requirements.txt": "pytest\n"})
    destination = tmp_path / "src"
    destination.mkdir()
    with pytest.raises(FileExistsError):
        unpack_archive(archive, destination, LIMITS)


def test_not_a_zip_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "project.zip"
    archive.write_bytes(b"this is a tarball, honest\n" * 100)
    assert_refused(archive, tmp_path, LIMITS, "not a valid zip archive")


def test_empty_file_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "project.zip"
    archive.write_bytes(b"")
    assert_refused(archive, tmp_path, LIMITS, "not a valid zip archive")


def test_truncated_zip_is_refused(tmp_path: Path) -> None:
    whole = write_zip(tmp_path / "whole.zip", {"requirements.txt": "pytest\n", "a.py": "x" * 5000})
    archive = tmp_path / "project.zip"
    archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    assert_refused(archive, tmp_path, LIMITS, "not a valid zip archive")


def damage(archive: Path, damage: str) -> None:
    """Damage the entry test_a.py so that only reading its data can tell."""
    data = bytearray(archive.read_bytes())
    central = data.rindex(b"test_a.py") - 46  # its entry in the central directory
    assert data[central : central + 4] == b"PK\x01\x02"
    if damage == "content":  # the CRC no longer matches
        data[data.index(b"def test_a")] ^= 0xFF
    elif damage == "deflate-stream":  # the compressed stream is garbage
        start = data.index(b"test_a.py") + len("test_a.py")
        data[start : start + 8] = b"\xff" * 8
    elif damage == "encrypted":  # general purpose flag bit 0, in the central directory
        data[central + 8] |= 0x01
    elif damage == "compression":  # method 99 (AES), in the central directory
        data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    archive.write_bytes(bytes(data))


def damaged_zip(tmp_path: Path, kind: str) -> Path:
    archive = tmp_path / "project.zip"
    method = zipfile.ZIP_DEFLATED if kind == "deflate-stream" else zipfile.ZIP_STORED
    with zipfile.ZipFile(archive, "w", method) as zf:
        zf.writestr("requirements.txt", "pytest\n")
        zf.writestr("test_a.py", "def test_a():\n    pass\n" * 20)
    damage(archive, kind)
    return archive


@pytest.mark.parametrize("kind", ["content", "deflate-stream"])
def test_damaged_entry_is_refused_while_unpacking(tmp_path: Path, kind: str) -> None:
    """The directory and headers are fine, so the check passes (it does not decompress);
    unpacking must refuse, not crash."""
    archive = damaged_zip(tmp_path, kind)
    assert check_archive(archive, LIMITS) == 2
    with pytest.raises(InvalidUpload, match=re.escape("entry 'test_a.py' cannot be read")):
        unpack_archive(archive, tmp_path / "work" / "src", LIMITS)


@pytest.mark.parametrize("kind", ["encrypted", "compression"])
def test_entry_that_cannot_be_opened_is_refused_by_the_check(tmp_path: Path, kind: str) -> None:
    archive = damaged_zip(tmp_path, kind)
    assert_refused(archive, tmp_path, LIMITS, re.escape("entry 'test_a.py' cannot be read"))


def patch_central_entry(archive: Path, name: str, offset: int, value: bytes) -> None:
    """Overwrite bytes of `name`'s entry in the central directory (offset from its start)."""
    data = bytearray(archive.read_bytes())
    central = data.rindex(name.encode()) - 46
    assert data[central : central + 4] == b"PK\x01\x02"
    data[central + offset : central + offset + len(value)] = value
    archive.write_bytes(bytes(data))


def test_entry_needing_a_newer_zip_version_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "project.zip", {"requirements.txt": "pytest\n"})
    patch_central_entry(archive, "requirements.txt", 6, (99).to_bytes(2, "little"))
    assert_refused(archive, tmp_path, LIMITS, "not a valid zip archive: zip file version 9.9")


def test_entry_name_that_is_not_the_utf8_it_claims_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("requirements.txt", "pytest\n")
        zf.writestr("caf\u00e9.py", "x = 1\n")  # stored with the UTF-8 flag
    data = archive.read_bytes()
    archive.write_bytes(data.replace("caf\u00e9".encode(), b"caf\xff\xfe"))
    assert_refused(archive, tmp_path, LIMITS, "not a valid zip archive")


def test_entry_whose_header_lies_outside_the_file_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "project.zip", {"requirements.txt": "pytest\n", "a.py": ""})
    # Its local header "at" 4 GiB: a seek past the end, then nothing to read.
    patch_central_entry(archive, "a.py", 42, (0xFFFFFFF0).to_bytes(4, "little"))
    assert_refused(archive, tmp_path, LIMITS, re.escape("entry 'a.py' cannot be read"))


def _damageable() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("requirements.txt", "pytest\n")
        archive.writestr("pkg/__init__.py", "")
        archive.writestr("pkg/a.py", "x = 1\n" * 40)
    return buffer.getvalue()


DAMAGEABLE = _damageable()


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    cut=st.one_of(st.none(), st.integers(0, len(DAMAGEABLE) - 1)),
    flips=st.lists(st.tuples(st.integers(0, len(DAMAGEABLE) - 1), st.integers(0, 255)), max_size=6),
)
def test_any_damage_to_a_zip_is_refused_or_harmless(
    tmp_path_factory: pytest.TempPathFactory, cut: int | None, flips: list[tuple[int, int]]
) -> None:
    """Truncated or with bytes overwritten anywhere (headers, directory, data): the check and
    the unpack either accept the archive or raise InvalidUpload, never anything else, and
    nothing is written outside the destination."""
    tmp_path = tmp_path_factory.mktemp("damaged")
    data = bytearray(DAMAGEABLE)
    for position, value in flips:
        data[position] = value
    if cut is not None:
        data = data[:cut]
    archive = tmp_path / "project.zip"
    archive.write_bytes(bytes(data))
    try:
        check_archive(archive, LIMITS)
        unpack_archive(archive, tmp_path / "work" / "src", LIMITS)
    except InvalidUpload:
        pass
    outside = {"project.zip", "work", "work/src"}
    assert all(path in outside or path.startswith("work/src/") for path in tree(tmp_path))


@pytest.mark.parametrize("name", ["../evil.py", "src/../../evil.py", "..\\evil.py"])
def test_entry_escaping_the_project_is_refused(tmp_path: Path, name: str) -> None:
    archive = zip_with_entry(tmp_path / "project.zip", zipfile.ZipInfo(name))
    assert zipfile.ZipFile(archive).namelist()[-1] == name  # the zip really holds it
    assert_refused(archive, tmp_path, LIMITS, "points outside the project")
    assert not (tmp_path / "work" / "evil.py").exists()
    assert not (tmp_path / "evil.py").exists()


@pytest.mark.parametrize("prefix", ["/tmp/", "C:/"])
def test_entry_with_absolute_path_is_refused(tmp_path: Path, prefix: str) -> None:
    name = f"{prefix}ci-test-{uuid.uuid4().hex}"
    archive = zip_with_entry(tmp_path / "project.zip", zipfile.ZipInfo(name))
    assert zipfile.ZipFile(archive).namelist()[-1] == name
    assert_refused(archive, tmp_path, LIMITS, "absolute path")
    assert not Path(name).exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("x" * 256 + ".py", "name longer than 255 bytes"), ("d/" * 1100 + "a.py", "longer than 2048")],
    ids=["name", "path"],
)
def test_entry_longer_than_a_worker_can_write_is_refused(
    tmp_path: Path, name: str, message: str
) -> None:
    # Accepted before, such a zip ended its job in `error` (ENAMETOOLONG on the worker).
    archive = zip_with_entry(tmp_path / "project.zip", zipfile.ZipInfo(name))
    assert_refused(archive, tmp_path, LIMITS, message)


def test_symlink_entry_is_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("passwd")
    link.external_attr = 0o120777 << 16
    archive = zip_with_entry(tmp_path / "project.zip", link, b"/etc/passwd")
    assert_refused(archive, tmp_path, LIMITS, "symbolic link")


def test_too_many_files_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "project.zip", {f"f{n}.py": "" for n in range(6)})
    limits = ArchiveLimits(max_files=5)
    assert_refused(archive, tmp_path, limits, "6 entries, more than the limit of 5")
    # At the limit it is fine.
    assert check_archive(archive, ArchiveLimits(max_files=6)) == 6


def test_declared_size_over_the_limit_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("requirements.txt", "pytest\n")
        zf.writestr("big.bin", b"\x01" * 2000)
    limits = ArchiveLimits(max_unpacked_bytes=1500)
    assert_refused(archive, tmp_path, limits, "more than the limit of 1500")


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 MB of zeros, deflated to a few dozen kilobytes."""
    archive = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("requirements.txt", "pytest\n")
        with zf.open("zeros.bin", "w") as sink:
            chunk = bytes(1024 * 1024)
            for _ in range(50):
                sink.write(chunk)
    assert archive.stat().st_size < 1024 * 1024
    return archive


def test_zip_bomb_is_refused_by_its_compression_ratio(zip_bomb: Path, tmp_path: Path) -> None:
    assert_refused(zip_bomb, tmp_path, ArchiveLimits(), "possible zip bomb")


def test_zip_bomb_is_refused_by_the_unpacked_size(zip_bomb: Path, tmp_path: Path) -> None:
    limits = ArchiveLimits(max_unpacked_bytes=10 * 1024**2, max_ratio=1e9)
    assert_refused(zip_bomb, tmp_path, limits, "more than the limit of")


def test_give_to_hands_the_tree_to_the_tests_user(tmp_path: Path) -> None:
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "f.py").write_text("")
    (tmp_path / "tree" / "link").symlink_to("/etc/passwd")  # never a zip's; not followed
    give_to(tmp_path / "tree", 1000, 1001)
    owners = {
        p.name: (p.lstat().st_uid, p.lstat().st_gid)
        for p in [tmp_path / "tree", *(tmp_path / "tree").rglob("*")]
    }
    assert set(owners.values()) == {(1000, 1001)}
    assert Path("/etc/passwd").stat().st_uid == 0
