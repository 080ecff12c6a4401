"""Retention over a real SQLite file and file blob store, through the real `ci-admin prune`:
old finished jobs go with everything they own (rows, artifact and upload blobs: files on
disk), and nothing else does; `--dry-run` prints the same and removes nothing. Artifact
blobs no listing names go once their job has ended or is gone. On a real Docker engine, this
server's environment images unused for CI_ENV_MAX_AGE_DAYS go (by `ci-admin prune` and the
periodic Pruner), and no other server's."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import docker
import docker.errors
import pytest

from ci_server.models import Artifact, Job, JobStatus, utcnow
from ci_server.models import TestOutcome as Outcome
from ci_server.models import TestResult as Result
from ci_server.retention import Pruner
from ci_server.runner.docker import DockerExecutor
from ci_server.runner.environments import IMAGE_REPOSITORY
from ci_server.runner.executor import ENVIRONMENT_LABEL, OWNER_LABEL
from ci_server.settings import Settings
from ci_server.states import claim, transition
from ci_server.store.blobs import artifact_key
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.sqlite import SqliteStore
from tests.e2e.harness import admin_command
from tests.fakes import wait_until
from tests.unit.test_store_contract import make_event, make_job


async def _finished(store: SqliteStore, blobs: FileBlobStore, n: int, days_ago: float) -> Job:
    """A job that ended `days_ago`, with an event, a result, two artifacts and an upload
    left over, all through the stores' own API."""
    job = make_job(n)
    await store.add_job(job)
    running = claim(job, "w")
    assert await store.update_job(running, expected=JobStatus.QUEUED)
    ended = transition(running, JobStatus.SUCCEEDED, exit_code=0)
    ended = ended.replace(finished_at=utcnow() - timedelta(days=days_ago))
    assert await store.update_job(ended, expected=JobStatus.RUNNING)
    await store.append_events([make_event(job.id, 1)])
    await store.set_test_results(job.id, [Result("t::a", Outcome.PASSED, 0.1)])
    artifacts = [Artifact("junit.xml", 3, "0" * 64, 0), Artifact("a/b.bin", 3, "1" * 64, 1)]
    for artifact in artifacts:
        await blobs.put(artifact_key(job.id, artifact.position), _bytes(b"abc"))
    await store.set_artifacts(job.id, artifacts)
    await blobs.put(job.id, _bytes(b"zip"))
    return ended


async def _bytes(data: bytes):
    yield data


async def _seed(database: Path, blobs_dir: Path) -> dict[str, str]:
    async with SqliteStore(database) as store, FileBlobStore(blobs_dir) as blobs:
        old = await _finished(store, blobs, 1, days_ago=40)
        recent = await _finished(store, blobs, 2, days_ago=1)
        waiting = make_job(3, created_at=utcnow() - timedelta(days=90))
        await store.add_job(waiting)
        await blobs.put(waiting.id, _bytes(b"zip"))
    return {"old": old.id, "recent": recent.id, "queued": waiting.id}


async def _state(database: Path, blobs_dir: Path) -> dict[str, object]:
    async with SqliteStore(database) as store, FileBlobStore(blobs_dir) as blobs:
        jobs = {job.id for job in await store.list_jobs()}
        events = {job_id: len(await store.events_after(job_id)) for job_id in jobs}
        kept = [blob.key for blob in await blobs.list_blobs()]
    return {"jobs": jobs, "events": events, "blobs": kept}


def _prune(database: Path, *options: str, images: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CI_")}
    env |= {"CI_RETENTION_DAYS": "30", "CI_ENV_MAX_AGE_DAYS": "30"}
    no_images = [] if images else ["--no-images"]
    return subprocess.run(
        [*admin_command(), "--db", str(database), "prune", *no_images, *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_prune_removes_old_finished_jobs_with_all_they_own_and_nothing_else(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ci.db"
    blobs_dir = tmp_path / "ci.db.data" / "blobs"  # the default CI_DATA_DIR
    ids = asyncio.run(_seed(database, blobs_dir))
    before = asyncio.run(_state(database, blobs_dir))

    dry = _prune(database, "--dry-run")

    assert dry.returncode == 0, dry.stderr
    assert f"job {ids['old']}  succeeded" in dry.stdout
    assert ids["recent"] not in dry.stdout and ids["queued"] not in dry.stdout
    assert "Would remove 1 finished job(s) and 2 artifact(s)" in dry.stderr
    assert asyncio.run(_state(database, blobs_dir)) == before

    done = _prune(database)

    assert done.returncode == 0, done.stderr
    assert f"job {ids['old']}" in done.stdout
    assert "Removed 1 finished job(s) and 2 artifact(s)" in done.stderr
    after = asyncio.run(_state(database, blobs_dir))
    assert after["jobs"] == {ids["recent"], ids["queued"]}
    assert after["blobs"] == sorted(
        [
            ids["recent"],
            artifact_key(ids["recent"], 0),
            artifact_key(ids["recent"], 1),
            ids["queued"],
        ]
    )
    assert after["events"] == {ids["recent"]: 1, ids["queued"]: 0}
    assert not any(ids["old"] in path.name for path in tmp_path.rglob("*"))


# -- artifact blobs no listing names ----------------------------------------------------------


async def _seed_orphans(database: Path, blobs_dir: Path) -> dict[str, list[str]]:
    """Artifact blobs with and without listings: of a job cancelled while they were stored,
    of a finished job (one listed, one not), of a job gone, of a running job, and one just
    stored; every one but the last stored two hours ago (the file's time)."""
    async with SqliteStore(database) as store, FileBlobStore(blobs_dir) as blobs:
        listed = await _finished(store, blobs, 1, days_ago=1)  # listed: 0 and 1
        cancelled = make_job(2)
        await store.add_job(cancelled)
        running = claim(cancelled, "w")
        assert await store.update_job(running, expected=JobStatus.QUEUED)
        ended = transition(running, JobStatus.CANCELLED)
        assert await store.update_job(ended, expected=JobStatus.RUNNING)
        waiting = make_job(3)
        await store.add_job(waiting)
        still_running = claim(waiting, "w")
        assert await store.update_job(still_running, expected=JobStatus.QUEUED)
        orphans = [
            artifact_key(cancelled.id, 0),
            artifact_key(cancelled.id, 1),
            artifact_key(listed.id, 2),
            artifact_key("0000000000ff", 0),
        ]
        kept = [artifact_key(still_running.id, 0)]
        for key in orphans + kept:
            await blobs.put(key, _bytes(b"left"))
        two_hours_ago = time.time() - 7200
        for key in orphans + kept:
            os.utime(blobs_dir / key, (two_hours_ago, two_hours_ago))
        await blobs.put(artifact_key("0000000000fe", 0), _bytes(b"just stored"))
    fresh = [artifact_key("0000000000fe", 0)]
    listed_keys = [artifact_key(listed.id, 0), artifact_key(listed.id, 1), listed.id]
    return {"orphans": orphans, "kept": sorted(kept + fresh + listed_keys)}


def test_prune_removes_artifact_blobs_no_listing_names_of_jobs_ended_or_gone(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ci.db"
    blobs_dir = tmp_path / "ci.db.data" / "blobs"
    seeded = asyncio.run(_seed_orphans(database, blobs_dir))
    before = asyncio.run(_state(database, blobs_dir))

    dry = _prune(database, "--dry-run")

    assert dry.returncode == 0, dry.stderr
    listed = [line.removeprefix("orphaned artifact ") for line in dry.stdout.splitlines()]
    assert sorted(listed) == sorted(seeded["orphans"]), dry.stdout
    assert "0 artifact(s), 4 orphaned artifact(s)" in dry.stderr
    assert asyncio.run(_state(database, blobs_dir)) == before

    done = _prune(database)

    assert done.returncode == 0, done.stderr
    assert "Removed 0 finished job(s) and 0 artifact(s), 4 orphaned artifact(s)" in done.stderr
    assert asyncio.run(_state(database, blobs_dir))["blobs"] == seeded["kept"]


# -- environment images on a real Docker engine -----------------------------------------------

LONG_AGO = "2020-01-01T00:00:00Z"


def _load_environment_image(client: docker.DockerClient, owner: str, key: str) -> str:
    """An environment image as the cache tags and labels it (EnvironmentCache.tag,
    ENVIRONMENT_LABEL, OWNER_LABEL), made in an instant: one empty layer, created LONG_AGO
    (`docker load` of a hand-made archive; a build or a commit would be created now).
    Its tag."""
    tag = f"{IMAGE_REPOSITORY}:{key[:20]}-{owner[:8]}"
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w"):
        pass
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": LONG_AGO,
            "config": {"Labels": {ENVIRONMENT_LABEL: key, OWNER_LABEL: owner}},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(layer.getvalue()).hexdigest()}"],
            },
        }
    ).encode()
    manifest = [{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for name, data in [
            ("layer.tar", layer.getvalue()),
            ("config.json", config),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    client.images.load(archive.getvalue())
    return tag


@dataclass
class _Images:
    stale: str
    """Of this server, last used 40 days ago."""
    never_used: str
    """Of this server, no use recorded: its creation (LONG_AGO) counts."""
    recent: str
    """Of this server, created LONG_AGO but used a day ago."""
    another_server: str
    """Of another server (another ci.owner) on the same engine, as old as can be."""

    def all(self) -> list[str]:
        return [self.stale, self.never_used, self.recent, self.another_server]


@pytest.fixture
def images(tmp_path: Path, docker_client: docker.DockerClient) -> Iterator[_Images]:
    owner = Settings(db_path=tmp_path / "ci.db").instance_id
    other = Settings(db_path=tmp_path / "another" / "ci.db").instance_id
    suffix = uuid.uuid4().hex
    made = _Images(
        stale=_load_environment_image(docker_client, owner, f"a{suffix}"),
        never_used=_load_environment_image(docker_client, owner, f"b{suffix}"),
        recent=_load_environment_image(docker_client, owner, f"c{suffix}"),
        another_server=_load_environment_image(docker_client, other, f"d{suffix}"),
    )

    async def record_uses() -> None:
        async with SqliteStore(tmp_path / "ci.db") as store:
            await store.record_environment_use(made.stale, utcnow() - timedelta(days=40))
            await store.record_environment_use(made.recent, utcnow() - timedelta(days=1))
            await store.record_environment_use(made.another_server, utcnow() - timedelta(days=90))

    asyncio.run(record_uses())
    yield made
    for tag in made.all():
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)


def _present(client: docker.DockerClient, tags: list[str]) -> list[str]:
    found = []
    for tag in tags:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.get(tag)
            found.append(tag)
    return found


@pytest.mark.docker
def test_prune_removes_this_servers_environment_images_unused_for_long_only(
    tmp_path: Path, images: _Images, docker_client: docker.DockerClient
) -> None:
    dry = _prune(tmp_path / "ci.db", "--dry-run", images=True)

    assert dry.returncode == 0, dry.stderr
    assert sorted(dry.stdout.split()[1::2]) == sorted([images.stale, images.never_used])
    assert "Would remove 2 environment image(s)" in dry.stderr
    assert _present(docker_client, images.all()) == images.all()

    done = _prune(tmp_path / "ci.db", images=True)

    assert done.returncode == 0, done.stderr
    assert "Removed 2 environment image(s)" in done.stderr
    assert _present(docker_client, images.all()) == [images.recent, images.another_server]

    async def uses() -> dict[str, datetime]:
        async with SqliteStore(tmp_path / "ci.db") as store:
            return await store.environment_uses()

    assert set(asyncio.run(uses())) == {images.recent, images.another_server}


@pytest.mark.docker
async def test_the_periodic_pruner_removes_stale_environment_images(
    tmp_path: Path, images: _Images, docker_client: docker.DockerClient
) -> None:
    settings = Settings(db_path=tmp_path / "ci.db", prune_interval_seconds=0.2)
    async with (
        SqliteStore(settings.db_path) as store,
        FileBlobStore(tmp_path / "blobs") as blobs,
        DockerExecutor(settings.instance_id) as executor,
        Pruner(store, blobs, settings, executor),
    ):
        await wait_until(
            lambda: _present(docker_client, [images.stale, images.never_used]) == [],
            what="the stale images to go",
            within=30,
            interval=0.2,
        )
    assert _present(docker_client, images.all()) == [images.recent, images.another_server]
