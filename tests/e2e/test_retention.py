"""End to end: retention in a running `ci-server` (real Docker jobs, the real `ci`).

Two jobs run and keep artifacts; one is then aged 40 days through the store's API on the
server's own database file (as an old job would be). The server's periodic task
(CI_PRUNE_INTERVAL_SECONDS) removes it with its events, results, artifact files and a
left-over upload under the data folder, and an orphaned artifact blob of a job long gone,
so that `ci list` and `ci show` no longer know it; the recent job and its artifacts stay.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from ci_server.models import utcnow
from ci_server.store.blobs import artifact_key
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.sqlite import SqliteStore
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, run_ci, wait_for
from tests.e2e.test_artifacts import make_project, submit
from tests.e2e.test_cli import describe

pytestmark = pytest.mark.docker

GONE_JOB = "0000000000ee"


async def _age(server: ServerProcess, job_id: str, days: float) -> None:
    """The job ended `days` ago; a left-over upload of it and an artifact blob of a job
    long gone, stored two hours ago, are in the blob store."""
    blobs_dir = Path(server.env["CI_DATA_DIR"]) / "blobs"
    async with FileBlobStore(blobs_dir) as blobs:
        for key in (job_id, artifact_key(GONE_JOB, 0)):
            await blobs.put(key, _bytes(b"left over"))
    two_hours_ago = time.time() - 7200
    os.utime(blobs_dir / artifact_key(GONE_JOB, 0), (two_hours_ago, two_hours_ago))
    async with SqliteStore(server.db_path) as store:  # last: a round may come at any time
        job = await store.get_job(job_id)
        old = job.replace(finished_at=utcnow() - timedelta(days=days))
        assert await store.update_job(old, expected=job.status)
        assert await store.events_after(job_id) and await store.test_results(job_id)


async def _bytes(data: bytes):
    yield data


async def _kept(server: ServerProcess, job_id: str) -> tuple[int, int, int]:
    """The job's events, test results and artifact listings still in the store."""
    async with SqliteStore(server.db_path) as store:
        return (
            len(await store.events_after(job_id)),
            len(await store.test_results(job_id)),
            len(await store.artifacts(job_id)),
        )


def _files_of(server: ServerProcess, job_id: str) -> list[str]:
    data = Path(server.env["CI_DATA_DIR"])
    return sorted(str(p.relative_to(data)) for p in data.rglob("*") if job_id in p.name)


def test_a_running_server_prunes_old_jobs_with_all_they_own_and_keeps_recent_ones(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    server = make_server(CI_RETENTION_DAYS="30", CI_PRUNE_INTERVAL_SECONDS="1")
    project = make_project(
        tmp_path / "writer",
        """
        Path("reports").mkdir()
        Path("reports/unit.xml").write_text("<unit/>")
        """,
    )
    old, _ = submit(project, server)
    recent, _ = submit(project, server)
    assert _files_of(server, old) == ["blobs/" + artifact_key(old, n) for n in (0, 1)]

    asyncio.run(_age(server, old, days=40))

    wait_for(
        lambda: not _files_of(server, old) and not _files_of(server, GONE_JOB),
        timeout=60,
        what=f"the files of job {old} and the orphaned artifact to go",
    )
    wait_for(lambda: asyncio.run(_kept(server, old)) == (0, 0, 0), timeout=30, what="its rows")
    listed = run_ci("list", "--json", cwd=tmp_path, server=server)
    shown = run_ci("show", old, cwd=tmp_path, server=server)
    out = tmp_path / "recent"
    fetched = run_ci("artifacts", recent, "-o", str(out), cwd=tmp_path, server=server)

    assert listed.returncode == 0, describe(listed)
    assert old not in listed.stdout and recent in listed.stdout
    assert shown.returncode != 0 and f"no job with id '{old}'" in shown.stderr, describe(shown)
    assert fetched.returncode == 0, describe(fetched)
    assert (out / "reports/unit.xml").read_text() == "<unit/>"
    assert asyncio.run(_kept(server, recent))[1:] == (1, 2)
    assert "retention: removed 1 job(s), 2 artifact(s)" in server.log()
    assert "1 orphaned artifact(s)" in server.log()
