"""A job's artifacts: the packer that runs in the container (collect_artifacts.py) and the
server's checks of what it left (artifacts.py), which trust nothing of it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ci_common.artifact_paths import safe_path
from ci_server.runner import collect_artifacts
from ci_server.runner.artifacts import MAX_HEADER_BYTES, ArtifactLimits, collect
from ci_server.runner.collect_artifacts import matches
from ci_server.runner.executor import ARTIFACTS_NAME, REPORT_NAME


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("htmlcov/**", "htmlcov/index.html", True),
        ("htmlcov/**", "htmlcov/a/b/c.js", True),
        ("htmlcov/**", "other/htmlcov/index.html", False),
        ("reports/*.xml", "reports/unit.xml", True),
        ("reports/*.xml", "reports/deep/unit.xml", False),
        ("**/*.png", "shot.png", True),
        ("**/*.png", "a/b/shot.png", True),
        ("*.txt", "a/b.txt", False),
        ("a/**/z", "a/z", True),
        ("a/**/z", "a/b/c/z", True),
        ("a?c", "abc", True),
    ],
)
def test_patterns_match_part_by_part(pattern: str, path: str, expected: bool) -> None:
    assert matches(pattern.split("/"), path.split("/")) is expected


def test_many_double_stars_match_in_linear_time() -> None:
    pattern = ["**", "a"] * 50 + ["b"]
    assert matches(pattern, ["a"] * 200) is False  # at once: no backtracking


def pack(project: Path, output: Path, patterns: list[str], files: int, size: int) -> str:
    """Run the packer as the container does; its stdout (the job's log)."""
    source = Path(collect_artifacts.__file__).read_text()
    arguments = [str(output), str(files), str(size), json.dumps(patterns)]
    done = subprocess.run(
        [sys.executable, "-I", "-c", source, *arguments],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_the_packer_keeps_matching_regular_files_and_says_what_it_left(tmp_path: Path) -> None:
    project, output = tmp_path / "project", tmp_path / "output"
    (project / "htmlcov").mkdir(parents=True)
    output.mkdir()
    (project / "htmlcov" / "index.html").write_text("<html>")
    (project / "htmlcov" / "data.bin").write_bytes(bytes(range(256)))
    (project / "htmlcov" / "passwd").symlink_to("/etc/passwd")
    (project / "htmlcov" / "big").write_bytes(b"x" * 5000)
    (project / "other.txt").write_text("not asked for")

    said = pack(project, output / ARTIFACTS_NAME, ["htmlcov/**"], 10, 1000)

    with tarfile.open(output / ARTIFACTS_NAME) as tar:
        assert sorted(tar.getnames()) == ["htmlcov/data.bin", "htmlcov/index.html"]
    assert "htmlcov/passwd not kept: not a regular file" in said
    assert "htmlcov/big not kept: past the 1,000 bytes allowed" in said


def test_the_packer_stops_at_the_file_count(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for n in range(5):
        (project / f"r{n}.xml").write_text(str(n))

    said = pack(project, tmp_path / ARTIFACTS_NAME, ["*.xml"], 2, 1000)

    with tarfile.open(tmp_path / ARTIFACTS_NAME) as tar:
        assert tar.getnames() == ["r0.xml", "r1.xml"]
    assert "3 more file(s) not kept: past the 2 allowed" in said


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../up", "a/../../b", "a//b", "./a", "a\\b", "a\nb", "", "x" * 300]
)
def test_unsafe_paths_are_refused(name: str) -> None:
    assert safe_path(name) is None


def test_safe_paths_pass() -> None:
    assert safe_path("htmlcov/index.html") == "htmlcov/index.html"
    assert safe_path("reports/été.xml") == "reports/été.xml"


def hostile_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def test_the_server_keeps_the_report_and_only_safe_regular_members(tmp_path: Path) -> None:
    output, folder = tmp_path / "output", tmp_path / "kept"
    output.mkdir()
    folder.mkdir()
    (output / REPORT_NAME).write_text("<testsuite/>")
    hostile_tar(
        output / ARTIFACTS_NAME,
        [
            (member("ok.bin"), b"\x00\x01\x02"),
            (member("../../etc/cron.d/evil"), b"x"),
            (member("/abs"), b"x"),
            (member("link", tarfile.SYMTYPE, "/etc/passwd"), b""),
            (member("hard", tarfile.LNKTYPE, "/etc/passwd"), b""),
            (member("fifo", tarfile.FIFOTYPE), b""),
            (member("ok.bin"), b"again"),
            (member("junit.xml"), b"the project's own"),
        ],
    )

    collected = collect(output, folder, ArtifactLimits())

    assert [a.path for a in collected.artifacts] == ["junit.xml", "ok.bin"]
    assert [a.position for a in collected.artifacts] == [0, 1]
    assert collected.files[1].read_bytes() == b"\x00\x01\x02"
    assert collected.artifacts[1].sha256 == hashlib.sha256(b"\x00\x01\x02").hexdigest()
    assert collected.artifacts[0].size == len("<testsuite/>")
    written = sorted(path.name for path in folder.iterdir())
    assert written == ["artifact-0", "artifact-1"]  # nothing else, nowhere else
    notes = "\n".join(collected.notes)
    for refused in ("../../etc/cron.d/evil", "/abs", "link", "hard", "fifo"):
        assert refused in notes
    assert "'ok.bin' is not kept twice" in notes


def test_the_server_bounds_count_and_bytes_and_says_so(tmp_path: Path) -> None:
    output, folder = tmp_path / "output", tmp_path / "kept"
    output.mkdir()
    folder.mkdir()
    hostile_tar(
        output / ARTIFACTS_NAME,
        [(member(f"f{n}"), b"x" * 40) for n in range(5)] + [(member("huge"), b"x" * 500)],
    )

    collected = collect(output, folder, ArtifactLimits(max_files=3, max_bytes=100))

    assert [a.path for a in collected.artifacts] == ["f0", "f1"]
    notes = "\n".join(collected.notes)
    assert "CI_MAX_ARTIFACT_BYTES" in notes
    assert "CI_MAX_ARTIFACT_FILES" not in notes  # the bytes ran out first

    few = collect(output, tmp_path, ArtifactLimits(max_files=1, max_bytes=10_000))
    assert [a.path for a in few.artifacts] == ["f0"]
    assert "5 more file(s) not kept: at most 1 are kept (CI_MAX_ARTIFACT_FILES)" in few.notes


def test_a_truncated_or_linked_tar_keeps_what_came_before(tmp_path: Path) -> None:
    output, folder = tmp_path / "output", tmp_path / "kept"
    output.mkdir()
    folder.mkdir()
    hostile_tar(output / ARTIFACTS_NAME, [(member("a"), b"a" * 100), (member("b"), b"b" * 4000)])
    whole = (output / ARTIFACTS_NAME).read_bytes()
    (output / ARTIFACTS_NAME).write_bytes(whole[:2048])

    collected = collect(output, folder, ArtifactLimits())
    assert [a.path for a in collected.artifacts] == ["a"]
    assert any("end early" in note for note in collected.notes)

    (output / ARTIFACTS_NAME).unlink()
    (output / ARTIFACTS_NAME).symlink_to("/etc/passwd")
    linked = collect(output, folder, ArtifactLimits())
    assert linked.artifacts == []
    assert linked.notes == [
        "the packed artifacts are not used: it is a symbolic link, not a regular file"
    ]


def test_a_flood_of_refused_members_is_said_in_a_few_short_lines(tmp_path: Path) -> None:
    # Each refused member was a log line of its own, past CI_MAX_LOG_BYTES (the notes are
    # the server's lines), with its whole name: a tar of 1 GiB is 2 million members.
    output, folder = tmp_path / "output", tmp_path / "kept"
    output.mkdir()
    folder.mkdir()
    hostile_tar(
        output / ARTIFACTS_NAME,
        [(member("ok"), b"x")]
        + [(member("ok"), b"again") for _ in range(2000)]
        + [(member(f"../{n}"), b"x") for n in range(2000)]
        + [(member(f"l{n}", tarfile.SYMTYPE, "/etc/passwd"), b"") for n in range(2000)]
        + [(member("../" + "n" * 60_000), b"x")],  # a long name, within MAX_HEADER_BYTES
    )

    collected = collect(output, folder, ArtifactLimits())

    assert [a.path for a in collected.artifacts] == ["ok"]
    assert len(collected.notes) <= 25, len(collected.notes)
    assert max(len(note) for note in collected.notes) < 500
    assert "5,981 more member(s) not kept for such reasons (6,001 in all)" in collected.notes


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_member_header_of_megabytes_ends_the_tar_before_it_is_read(
    tmp_path: Path, tar_format: int
) -> None:
    # tarfile reads a long name (GNU) or an extended header (pax) whole into memory: the
    # tests could make it as big as the file may be (CI_CONTAINER_FILE_MB, 1 GiB).
    output, folder = tmp_path / "output", tmp_path / "kept"
    output.mkdir()
    folder.mkdir()
    with tarfile.open(output / ARTIFACTS_NAME, "w", format=tar_format) as tar:
        tar.addfile(member("first"), io.BytesIO(b""))
        tar.addfile(member("n" * (MAX_HEADER_BYTES + 1)), io.BytesIO(b""))

    collected = collect(output, folder, ArtifactLimits())

    assert [a.path for a in collected.artifacts] == ["first"]
    assert [note[:60] for note in collected.notes] == [
        "the packed artifacts end early: a member's header of more th"
    ]
