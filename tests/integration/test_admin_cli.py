"""`ci-admin` on a real SQLite file and a real PostgreSQL database, in-process: what it
prints, and its errors (exit 2)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from ci_server import accounts
from ci_server.admin import main
from ci_server.models import Job, JobStatus, new_job_id
from ci_server.states import transition
from ci_server.store.factory import Database, store_at
from ci_server.users import User, hash_secret, parse_key
from tests.conftest import with_database

QUEUED = JobStatus.QUEUED
KEY = re.compile(r"ci_[0-9a-f]{12}_[A-Za-z0-9_-]{43}")


class Admin:
    """Runs `ci-admin --db <file or URL> ...` and keeps what it printed."""

    def __init__(self, db: Database, capsys: pytest.CaptureFixture[str]) -> None:
        self.db = db
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        try:
            code = main(["--db", str(self.db), *args])
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out

    def fails(self, *args: str) -> str:
        """Exit 2 and one `ci-admin: error:` line, no traceback; the error's text."""
        code, out, err = self(*args)
        assert code == 2, (out, err)
        assert "Traceback" not in err
        [error] = [line for line in err.splitlines() if line.startswith("ci-admin: error: ")]
        return error

    def users(self) -> list[User]:
        return users_in(self.db)


def users_in(database: Database) -> list[User]:
    async def read() -> list[User]:
        async with store_at(database) as store:
            return await store.list_users()

    return asyncio.run(read())


@pytest.fixture(params=["sqlite", "postgres"])
def admin(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Admin:
    if request.param == "sqlite":
        return Admin(tmp_path / "ci.db", capsys)
    return Admin(request.getfixturevalue("postgres_database"), capsys)


def test_users_are_created_listed_and_deactivated(admin: Admin) -> None:
    out = admin.ok("user", "create", "--name", "Ann", "--email", "Ann@Example.com", "--admin")
    [ann] = admin.users()
    assert out.strip() == f"Created an admin: Ann <ann@example.com>, id {ann.id}"
    admin.ok("user", "create", "--name", "Bob", "--email", "bob@example.com")

    table = admin.ok("user", "list").splitlines()
    assert table[0].split() == ["ID", "NAME", "EMAIL", "ROLE", "STATUS", "CREATED"]
    assert table[1].split()[:5] == [ann.id, "Ann", "ann@example.com", "admin", "active"]
    assert table[2].split()[2:5] == ["bob@example.com", "user", "active"]
    listed = json.loads(admin.ok("user", "list", "--json"))
    assert [(u["email"], u["is_admin"], u["active"]) for u in listed] == [
        ("ann@example.com", True, True),
        ("bob@example.com", False, True),
    ]

    out = admin.ok("user", "deactivate", "--email", "BOB@example.com")
    assert "Deactivated Bob <bob@example.com>" in out
    assert "already deactivated" in admin.ok("user", "deactivate", "--email", "bob@example.com")
    assert [u.active for u in admin.users()] == [True, False]


def test_deactivating_says_what_happens_to_open_streams_and_queued_jobs(admin: Admin) -> None:
    admin.ok("user", "create", "--name", "Bob", "--email", "bob@example.com")
    [bob] = admin.users()

    async def add_jobs() -> None:
        async with store_at(admin.db) as store:
            for owner in (bob.id, bob.id, "someone"):
                await store.add_job(Job(new_job_id(), owner_id=owner))
            finished = Job(new_job_id(), owner_id=bob.id)
            await store.add_job(finished)
            await store.update_job(transition(finished, JobStatus.CANCELLED), expected=QUEUED)

    asyncio.run(add_jobs())
    code, out, err = admin("user", "deactivate", "--email", "bob@example.com")
    assert code == 0, err
    assert out == "Deactivated Bob <bob@example.com>: their API keys no longer work.\n"
    assert err == (
        "Within 2s a running server closes their open event streams and cancels their "
        "2 queued job(s); running jobs may finish.\n"
    )


def test_a_key_is_printed_once_and_never_listed(admin: Admin) -> None:
    admin.ok("user", "create", "--name", "Ann", "--email", "ann@example.com")
    code, out, err = admin("key", "create", "--email", "ann@example.com", "--name", "laptop")
    assert code == 0, err
    key = out.strip()
    assert KEY.fullmatch(key), out  # stdout is the key alone: KEY=$(ci-admin key create ...)
    assert key not in err
    assert "CI_API_KEY" in err
    assert "config.toml" in err
    key_id, secret = parse_key(key)

    table = admin.ok("key", "list")
    assert table.splitlines()[0].split() == [
        "ID",
        "NAME",
        "OWNER",
        "CREATED",
        "LAST",
        "USED",
        "REVOKED",
    ]
    row = table.splitlines()[1].split()
    assert row[:3] == [key_id, "laptop", "ann@example.com"]
    assert row[-1] == "-"  # not revoked
    for secretish in (secret, hash_secret(secret)):
        assert secretish not in table

    assert "Revoked API key" in admin.ok("key", "revoke", key_id)
    assert "already revoked" in admin.ok("key", "revoke", key_id)
    assert admin.ok("key", "list", "--email", "ann@example.com").splitlines()[1].split()[-1] != "-"


def test_a_created_key_authenticates_its_user(admin: Admin) -> None:
    admin.ok("user", "create", "--name", "Ann", "--email", "ann@example.com")
    key = admin.ok("key", "create", "--email", "ann@example.com", "--name", "ci").strip()

    async def who() -> User:
        async with store_at(admin.db) as store:
            return await accounts.authenticate(store, key)

    assert asyncio.run(who()).email == "ann@example.com"


def test_mistakes_are_clear_errors(admin: Admin) -> None:
    admin.ok("user", "create", "--name", "Ann", "--email", "ann@example.com")
    admin.ok("user", "create", "--name", "Bob", "--email", "bob@example.com")
    admin.ok("user", "deactivate", "--email", "bob@example.com")
    cases = {
        ("user", "create", "--name", "A", "--email", "ANN@example.com"): (
            "a user with email 'ann@example.com' already exists"
        ),
        ("user", "create", "--name", "A", "--email", "not-an-email"): "not an email address",
        ("user", "create", "--name", " ", "--email", "c@example.com"): "name must have",
        ("user", "deactivate", "--email", "nobody@example.com"): "no user with email",
        ("key", "create", "--email", "nobody@example.com", "--name", "k"): "no user with email",
        ("key", "create", "--email", "bob@example.com", "--name", "k"): "is deactivated",
        ("key", "list", "--email", "nobody@example.com"): "no user with email",
        ("key", "revoke", "0123456789ab"): "no API key with id '0123456789ab'",
    }
    for args, message in cases.items():
        assert message in admin.fails(*args), args
    assert len(admin.users()) == 2


def test_the_database_comes_from_ci_db_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CI_DB_PATH", str(tmp_path / "from-env.db"))
    assert main(["user", "create", "--name", "Ann", "--email", "ann@example.com"]) == 0
    assert (tmp_path / "from-env.db").is_file()
    capsys.readouterr()


def test_the_database_url_comes_from_ci_database_url(
    tmp_path: Path,
    postgres_database: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CI_DB_PATH", str(tmp_path / "not-this.db"))
    monkeypatch.setenv("CI_DATABASE_URL", postgres_database)
    assert main(["user", "create", "--name", "Ann", "--email", "ann@example.com"]) == 0
    assert [user.email for user in users_in(postgres_database)] == ["ann@example.com"]
    assert not (tmp_path / "not-this.db").exists()
    capsys.readouterr()


def test_an_unreachable_database_is_a_clear_error_without_its_password(
    postgres_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed_port = Admin("postgresql://ci:s3cret@127.0.0.1:1/ci", capsys)
    error = closed_port.fails("user", "list")
    assert "cannot use the database postgresql://ci:***@127.0.0.1:1/ci" in error
    assert "s3cret" not in error
    missing = Admin(with_database(postgres_server, "no_such_database"), capsys)
    assert 'database "no_such_database" does not exist' in missing.fails("user", "list")
    bad_port = Admin("postgresql://ci@localhost:port/ci", capsys)
    code, _, err = bad_port("user", "list")
    assert code == 2
    assert "argument --db: Port could not be cast to integer" in err


def test_a_file_that_is_no_database_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ci.db"
    path.write_text("this is not a database, it is a text file\n" * 100)
    assert "cannot use the database" in Admin(path, capsys).fails("user", "list")


# -- workers ----------------------------------------------------------------------------------


def test_workers_are_listed_with_their_state_heartbeat_and_running_jobs(
    admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_WORKER_TIMEOUT", "30")
    assert admin.ok("workers") == ""  # none yet (said on stderr)
    job = Job(id=new_job_id())

    async def set_up() -> None:
        async with store_at(admin.db) as store:
            for name, jobs in (("build-1", 2), ("build-2", 4), ("old", 1)):
                await store.register_worker(name, jobs)
            await store.worker_stopped("old")
            await store.add_job(job)
            await store.claim_next_job("build-2")

    asyncio.run(set_up())

    table = admin.ok("workers").splitlines()
    assert table[0].split() == [
        "WORKER",
        "STATE",
        "LAST",
        "HEARTBEAT",
        "STARTED",
        "JOBS",
        "RUNNING",
    ]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["build-1"][1:3] == ["alive", "0s"]
    assert rows["build-1"][-2:] == ["0/2", "-"]
    assert rows["build-2"][-2:] == ["1/4", job.id]
    assert rows["old"][1] == "stopped"

    listed = {w["name"]: w for w in json.loads(admin.ok("workers", "--json"))}
    assert listed["build-2"]["running_jobs"] == [job.id]
    assert listed["build-2"]["max_jobs"] == 4
    assert listed["build-1"]["state"] == "alive"
    assert 0 <= listed["build-1"]["seconds_since_heartbeat"] < 30

    monkeypatch.setenv("CI_WORKER_TIMEOUT", "0.001")  # everyone is silent for longer
    states = {w["name"]: w["state"] for w in json.loads(admin.ok("workers", "--json"))}
    assert states == {"build-1": "lost", "build-2": "lost", "old": "stopped"}
