"""End to end: uploads that send only what changed (issue 17), with the real `ci`, a real
`ci-server` and Docker.

A generated project (CI_E2E_DELTA_FILES files of 10 KB: by default 20,000 files, 200 MB,
the size issue 17 names; bench/delta.py times it) is submitted, then changed and submitted
again: what is sent is what changed, and the job's tests (which check the project against
its expect.json) see every change. Another user with the same files gets nothing through
their hashes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import requests

from ci_client.contents import snapshot
from ci_client.hashcache import HashCache
from tests.e2e.conftest import ServerFactory
from tests.e2e.generated import data_file, expect, make_project
from tests.e2e.harness import ServerProcess, run_ci

FILES = int(os.environ.get("CI_E2E_DELTA_FILES", "20000"))
FILE_BYTES = 10_000
SENT = re.compile(
    r"^Sent ([\d,]+) of ([\d,]+) files \(([\d.]+) (B|KB|MB|GB) of ([\d.]+) (B|KB|MB|GB)\) to ",
    re.M,
)
UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

pytestmark = pytest.mark.docker


def submit(root: Path, server: ServerProcess, key: str | None = None) -> tuple[int, int, float]:
    """`ci submit test` to a passing end: (files sent, files in all, bytes sent)."""
    env = {"CI_API_KEY": key} if key else None
    result = run_ci("submit", "test", cwd=root, server=server, env=env, timeout=600)
    described = f"exit {result.returncode}\n{result.stderr}\n{result.stdout[-3000:]}"
    assert result.returncode == 0, described
    match = SENT.search(result.stderr)
    assert match, described
    sent_bytes = float(match.group(3)) * UNITS[match.group(4)]
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", "")), sent_bytes


def test_a_second_submit_sends_only_what_changed_and_the_tests_see_it(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(CI_MAX_FILES=str(FILES + 100))  # 20,000 by default
    root = tmp_path / "big"
    expected = make_project(root, FILES, FILES * FILE_BYTES)
    total_files = FILES + 4  # the test, pyproject.toml, note.txt, expect.json

    sent, total, sent_bytes = submit(root, server)
    assert (sent, total) == (total_files, total_files)
    assert sent_bytes > FILES * FILE_BYTES * 0.9  # random bytes: zstd cannot shrink them

    # One file changed (and the expectations the tests read).
    (root / "data" / "note.txt").write_text("second\n")
    expected["text"]["data/note.txt"] = "second\n"
    expect(root, expected)
    sent, total, sent_bytes = submit(root, server)
    assert (sent, total) == (2, total_files)
    assert sent_bytes < 1024**2

    # Renamed, deleted, made executable, emptied: all arrive.
    (root / data_file(1)).rename(root / "data" / "renamed.bin")
    (root / data_file(2)).unlink()
    (root / data_file(3)).chmod(0o755)
    (root / data_file(4)).write_bytes(b"")
    expected["absent"] += [data_file(1), data_file(2)]
    expected["executable"].append(data_file(3))
    expected["empty"].append(data_file(4))
    expected["bin_files"] = FILES - 1
    expect(root, expected)
    sent, total, sent_bytes = submit(root, server)
    # The renamed file's bytes are there already; the empty file is new content (of 0 bytes).
    assert sent <= 2, (sent, total)
    assert total == total_files - 1
    assert sent_bytes < 1024**2


def test_another_user_with_the_same_files_cannot_read_them_through_hashes(
    server: ServerProcess, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    make_project(root, 20, 20 * 1000)
    submit(root, server)  # the admin's
    with HashCache(tmp_path / "cache.sqlite3", root) as cache:
        snap = snapshot(root, cache)
    bob = server.add_user("bob")
    headers = {"Authorization": f"Bearer {bob}"}

    asked = requests.post(
        f"{server.url}/uploads/missing",
        json={"hashes": [snap.root, *snap.files]},
        headers=headers,
        timeout=30,
    )
    assert asked.status_code == 200
    assert set(asked.json()["missing"]) == {snap.root, *snap.files}

    job = requests.post(f"{server.url}/jobs", data={"tree": snap.root}, headers=headers, timeout=30)
    assert job.status_code == 409, job.text
    assert "not on the server" in job.json()["detail"]

    # Bob sends everything himself, and his job runs.
    sent, total, _ = submit(root, server, key=bob)
    assert sent == total


def test_a_content_that_does_not_match_its_hash_is_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    import zstandard

    from ci_common.trees import content_hash, record_header

    lie = record_header(content_hash(b"the truth"), 5) + b"a lie"
    body = zstandard.ZstdCompressor().compress(lie)
    answer = requests.post(
        f"{server.url}/uploads/blobs",
        data=body,
        headers={**server.headers, "Content-Type": "application/x-ci-blobs+zstd"},
        timeout=30,
    )
    assert answer.status_code == 400
    assert "does not match its hash" in answer.json()["detail"]


ATTACK = """
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_source_is_as_sent_and_the_kept_tree_cannot_be_changed():
    assert (ROOT / "victim.txt").read_text() == "as sent\\n"
    assert (ROOT / "victim.txt").stat().st_mode & 0o777 == 0o644
    assert not (ROOT / "planted.txt").exists()
    attempts = [
        lambda: Path("/src/victim.txt").write_text("changed\\n"),
        lambda: os.chmod("/src/victim.txt", 0o777),
        lambda: os.unlink("/src/victim.txt"),
        lambda: os.rename("/src/victim.txt", "/src/moved.txt"),
        lambda: Path("/src/planted.txt").write_text("planted\\n"),
    ]
    for attempt in attempts:
        with pytest.raises(OSError):
            attempt()
    # Its own copy is its to change, what this submit changed and the folders it added too.
    (ROOT / "victim.txt").write_text("changed\\n")
    os.chmod(ROOT / "victim.txt", 0o777)
    (ROOT / "planted.txt").write_text("planted\\n")
    (ROOT / "round.txt").write_text("changed\\n")
    for added in ROOT.glob("added-*"):
        (added / "made.txt").write_text("made\\n")
        (added / "sent.txt").unlink()
"""


def test_a_job_cannot_change_the_workspace_the_next_job_of_its_project_gets(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The worker keeps a project's last workspace for its next job (workspace_cache.py),
    mounted read-only into the job's container: a job that tries to change it, to plant a
    file or to change a mode, changes only its own copy, and the next job gets the files as
    sent. Its copy is its own to write, the files and folders each submit added included
    (the worker writes them as the tests' user's)."""
    root = tmp_path / "attack"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_attack.py").write_text(ATTACK)
    (root / "victim.txt").write_text("as sent\n")
    (root / "pyproject.toml").write_text('[project]\nname = "attack"\nversion = "0"\n')
    for round_ in ("first", "second", "third"):
        (root / "round.txt").write_text(f"{round_}\n")  # each submit a new tree
        (root / f"added-{round_}").mkdir()  # and a new folder
        (root / f"added-{round_}" / "sent.txt").write_text(f"sent in {round_}\n")
        sent, _, _ = submit(root, server)
        assert sent == (5 if round_ == "first" else 2)
    # The jobs ran on the kept tree: the worker has it, with its files as sent.
    kept = Path(server.env["CI_DATA_DIR"]) / "workspace-cache"
    (entry,) = kept.iterdir()
    assert (entry / "files" / "victim.txt").read_text() == "as sent\n"
    assert (entry / "files" / "round.txt").read_text() == "third\n"
    assert not (entry / "files" / "planted.txt").exists()
    assert not (entry / "files" / "added-third" / "made.txt").exists()
