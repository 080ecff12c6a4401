"""Who may do what, end to end: real `ci-server` processes, keys from the real `ci-admin`,
and the real `ci` command.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from ci_server.settings import Settings
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, free_port, run_ci, server_env, start_ci
from tests.e2e.test_cli import ASYNC_SUBMITTED, LineReader, assert_usage_error, describe

ProjectFactory = Callable[[str], Path]
UNKNOWN_ID = "0123456789ab"
FIX_HINTS = ("ci-admin key create", "--api-key", "CI_API_KEY", "config.toml")
LOCKED_OUT_WITHIN = 15.0
"""Seconds for a revoked key's open `ci wait` to end: the server re-checks every 2 s; the
rest is room for a loaded machine."""


def as_user(key: str) -> dict[str, str]:
    """The CLI's environment for another user than the server's admin."""
    return {"CI_API_KEY": key}


def key_id(key: str) -> str:
    return key.split("_")[1]  # ci_<key id>_<secret>


def email_of(server: ServerProcess, name: str) -> str:
    listed = server.admin("user", "list", "--json")
    [email] = [user["email"] for user in json.loads(listed.stdout) if user["name"] == name]
    return email


def container_names(
    docker_client: docker.DockerClient, server: ServerProcess, since: float
) -> set[str]:
    """The names this server's containers were created or renamed with since then (a warm
    container takes its job's name when it takes the job)."""
    instance = Settings(db_path=server.db_path).instance_id
    events = docker_client.events(
        since=since,
        until=time.time(),
        filters={
            "type": "container",
            "event": ["create", "rename"],
            "label": f"ci.instance={instance}",
        },
        decode=True,
    )
    return {event["Actor"]["Attributes"]["name"] for event in events}


def submit_as(key: str, project: Path, server: ServerProcess) -> str:
    submitted = run_ci("submit", "test", "--async", cwd=project, server=server, env=as_user(key))
    match = ASYNC_SUBMITTED.match(submitted.stdout.strip())
    assert match, describe(submitted)
    return match.group(1)


@pytest.mark.docker
def test_the_cli_without_a_key_or_with_a_bad_one_says_how_to_fix_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    missing = run_ci("list", cwd=tmp_path, server=server.url, timeout=60)  # a URL: no key
    assert_usage_error(missing, "requires an API key and none was given", *FIX_HINTS)

    wrong = f"ci_{'0' * 12}_not-a-key-of-this-server"
    bad = run_ci("list", cwd=tmp_path, server=server, timeout=60, env=as_user(wrong))
    assert_usage_error(bad, "refused the API key from CI_API_KEY (invalid API key)", *FIX_HINTS)

    # The documented config file works too (here under XDG_CONFIG_HOME).
    config_home = tmp_path / "xdg"
    (config_home / "ci").mkdir(parents=True)
    (config_home / "ci" / "config.toml").write_text(
        f'server = "{server.url}"\napi_key = "{server.api_key}"\n'
    )
    configured = run_ci(
        "list",
        cwd=tmp_path,
        server=server.url,
        timeout=60,
        env={"XDG_CONFIG_HOME": str(config_home), "CI_SERVER_URL": ""},
    )
    assert configured.returncode == 0, describe(configured)
    assert "No jobs yet" in configured.stderr


@pytest.mark.docker
def test_a_user_cannot_follow_cancel_or_list_another_users_job(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path
) -> None:
    ann, bob = server.add_user("ann"), server.add_user("bob")
    job_id = submit_as(ann, project("hanging"), server)

    for command in (("wait",), ("wait", "--all"), ("cancel",), ("show",), ("logs",)):
        unknown = run_ci(*command, UNKNOWN_ID, cwd=tmp_path, server=server, env=as_user(bob))
        theirs = run_ci(*command, job_id, cwd=tmp_path, server=server, env=as_user(bob))
        expected = assert_usage_error(unknown, f"no job with id {UNKNOWN_ID!r}")
        assert assert_usage_error(theirs) == expected.replace(UNKNOWN_ID, job_id)
    bobs_list = run_ci("list", "--json", cwd=tmp_path, server=server, env=as_user(bob))
    assert bobs_list.returncode == 0, describe(bobs_list)
    assert json.loads(bobs_list.stdout) == []
    assert server.job(job_id)["status"] in ("queued", "running")  # Bob's cancel did nothing

    anns_list = run_ci("list", "--json", cwd=tmp_path, server=server, env=as_user(ann))
    assert [job["job_id"] for job in json.loads(anns_list.stdout)] == [job_id]
    admins_list = run_ci("list", "--json", cwd=tmp_path, server=server)
    assert [job["job_id"] for job in json.loads(admins_list.stdout)] == [job_id]

    cancelled = run_ci("cancel", job_id, cwd=tmp_path, server=server, env=as_user(ann))
    assert cancelled.returncode == 0, describe(cancelled)
    assert server.job(job_id)["status"] == "cancelled"


@pytest.mark.docker
def test_a_revoked_key_is_refused_at_once(server: ServerProcess, tmp_path: Path) -> None:
    ann = server.add_user("ann")
    before = run_ci("list", cwd=tmp_path, server=server, env=as_user(ann), timeout=60)
    assert before.returncode == 0, describe(before)

    revoked = server.admin("key", "revoke", key_id(ann))
    assert revoked.returncode == 0, revoked.stderr

    after = run_ci("list", cwd=tmp_path, server=server, env=as_user(ann), timeout=60)
    assert_usage_error(after, f"API key {key_id(ann)}", "has been revoked", *FIX_HINTS)
    assert server.get("/jobs").status_code == 200  # the admin's key still works


@pytest.mark.docker
@pytest.mark.parametrize(
    ("fixture", "output"),
    [("hanging", "hanging test started"), ("flooding", "flood line 1000")],
    ids=["idle stream", "flooded stream"],
)
def test_revoking_a_key_ends_the_ci_wait_open_with_it_within_seconds(
    server: ServerProcess, project: ProjectFactory, tmp_path: Path, fixture: str, output: str
) -> None:
    ann = server.add_user("ann")
    job_id = submit_as(ann, project(fixture), server)
    waiting = start_ci("wait", "--all", job_id, cwd=tmp_path, server=server, env=as_user(ann))
    assert waiting.stdout is not None and waiting.stderr is not None
    stdout, stderr = LineReader(waiting.stdout), LineReader(waiting.stderr)
    try:
        stdout.wait_for_line(re.compile(f"{output}$"), timeout=180)
        assert waiting.poll() is None

        revoked = server.admin("key", "revoke", key_id(ann))
        assert revoked.returncode == 0, revoked.stderr
        locked_out = time.monotonic()
        assert waiting.wait(LOCKED_OUT_WITHIN) == 2
        print(f"`ci wait` ended {time.monotonic() - locked_out:.1f}s after the revocation")
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(30)
    stdout.rest(timeout=10)
    errors = stderr.rest(timeout=10)
    assert errors.splitlines()[-1].startswith("ci: error: "), errors
    for fragment in (f"API key {key_id(ann)} (ann's key) has been revoked", *FIX_HINTS):
        assert fragment in errors.splitlines()[-1], errors
    assert "Traceback" not in errors

    # The job goes on: its owner's revoked key changes nothing for it, an admin follows it.
    assert server.job(job_id)["status"] == "running"
    cancelled = run_ci("cancel", job_id, cwd=tmp_path, server=server, timeout=60)
    assert cancelled.returncode == 0, describe(cancelled)


@pytest.mark.docker
def test_deactivating_a_user_cancels_their_queued_jobs_which_never_start(
    make_server: ServerFactory,
    project: ProjectFactory,
    tmp_path: Path,
    docker_client: docker.DockerClient,
) -> None:
    server = make_server(CI_MAX_CONCURRENT_JOBS="1")
    ann, passing = server.add_user("ann"), project("passing")
    since = time.time()
    assert server.api_key is not None
    blocking = submit_as(server.api_key, project("hanging"), server)  # an admin's
    server.wait_for_status(blocking, "running")
    queued = [submit_as(ann, passing, server) for _ in range(2)]
    watching = start_ci("wait", "--all", queued[0], cwd=tmp_path, server=server)  # the admin
    assert watching.stderr is not None
    watched = LineReader(watching.stderr)
    try:
        watched.wait_for_line(re.compile(r"^\[ci\] Job is queued$"), timeout=60)

        deactivated = server.admin("user", "deactivate", "--email", email_of(server, "ann"))
        assert deactivated.returncode == 0, deactivated.stderr
        assert "cancels their 2 queued job(s)" in deactivated.stderr
        for job_id in queued:
            job = server.wait_for_status(job_id, "cancelled", timeout=LOCKED_OUT_WITHIN)
            assert job["reason"] == "cancelled: owner deactivated"
            assert job["start_time"] is None
        assert watching.wait(LOCKED_OUT_WITHIN) == 1
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.wait(30)
    outcome = watched.rest(timeout=10).splitlines()[-1]
    assert outcome == f"Job {queued[0]} cancelled (cancelled: owner deactivated)"

    assert server.job(blocking)["status"] == "running"  # they did not wait for a worker
    cancelled = run_ci("cancel", blocking, cwd=tmp_path, server=server, timeout=60)
    assert cancelled.returncode == 0, describe(cancelled)
    names = container_names(docker_client, server, since)
    assert f"ci-{blocking}" in names
    assert not {name for name in names if any(job_id in name for job_id in queued)}, names


def test_auth_off_refuses_to_start_on_a_network_address(tmp_path: Path) -> None:
    env = server_env(tmp_path, "ci-runner:bookworm", {"CI_AUTH": "off"})
    result = subprocess.run(
        [sys.executable, "-m", "ci_server", "--host", "0.0.0.0", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "CI_AUTH=off" in result.stderr
    assert "only on a loopback address" in result.stderr
    assert "--host 0.0.0.0" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.docker
def test_auth_off_on_loopback_needs_no_key(
    make_server: ServerFactory, project: ProjectFactory
) -> None:
    server = make_server(CI_AUTH="off")
    assert server.api_key is None
    passing = project("passing")
    result = run_ci("submit", "test", cwd=passing, server=server.url)  # a URL: no key sent
    assert result.returncode == 0, describe(result)
    listed = run_ci("list", "--json", cwd=passing, server=server.url, timeout=60)
    [job] = json.loads(listed.stdout)
    assert (job["status"], job["owner_id"]) == ("succeeded", "anonymous")
