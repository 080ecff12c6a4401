"""The AccountStore contract for users, API keys, dashboard sessions and job owners: every backend
passes it.

Jobs come from the helpers of the main contract suite (tests/unit/test_store_contract.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from ci_server.models import JobNotFound
from ci_server.store.repository import Store
from ci_server.store.sqlite import MIGRATIONS, SqliteStore
from ci_server.users import (
    ApiKey,
    ApiKeyNotFound,
    EmailTaken,
    Session,
    SessionNotFound,
    User,
    UserNotFound,
    issue_key,
    issue_session,
    new_user_id,
)
from tests.unit.conftest import StoreFactory
from tests.unit.test_store_contract import BASE_TIME, add_jobs, make_job


def make_user(n: int, **changes: object) -> User:
    """The n-th user, created n seconds after BASE_TIME."""
    user = User(
        id=new_user_id(),
        name=f"User {n}",
        email=f"user{n}@example.com",
        created_at=BASE_TIME + timedelta(seconds=n, microseconds=n),
    )
    return user.replace(**changes)


def make_key(user: User, n: int) -> ApiKey:
    record, _ = issue_key(user.id, f"key {n}")
    return record.replace(created_at=BASE_TIME + timedelta(minutes=n, microseconds=n))


def make_session(key: ApiKey, n: int) -> Session:
    """A session of `key`, made n hours after BASE_TIME, lasting an hour."""
    record, _ = issue_session(key, timedelta(hours=1))
    created_at = BASE_TIME + timedelta(hours=n, microseconds=n)
    return record.replace(created_at=created_at, expires_at=created_at + timedelta(hours=1))


async def add_users(store: Store, count: int) -> list[User]:
    users = [make_user(n) for n in range(count)]
    for user in users:
        await store.add_user(user)
    return users


# -- users ------------------------------------------------------------------------------------


async def test_every_user_field_round_trips(store: Store) -> None:
    user = make_user(1, name='Zoë O\'Brien "zo"', is_admin=True, active=False)
    await store.add_user(user)
    assert await store.get_user(user.id) == user
    assert await store.get_user_by_email(user.email) == user
    assert (await store.get_user(user.id)).created_at.utcoffset() == timedelta(0)


async def test_unknown_user_raises_user_not_found(store: Store) -> None:
    await add_users(store, 2)
    with pytest.raises(UserNotFound, match="0123456789ab"):
        await store.get_user("0123456789ab")
    with pytest.raises(UserNotFound, match=r"nobody@example\.com"):
        await store.get_user_by_email("nobody@example.com")


async def test_an_email_belongs_to_one_user(store: Store) -> None:
    [first] = await add_users(store, 1)
    with pytest.raises(EmailTaken) as raised:
        await store.add_user(make_user(2, email=first.email))
    assert raised.value.email == first.email
    assert await store.list_users() == [first]
    await store.add_user(make_user(3))  # the store is still usable
    assert len(await store.list_users()) == 2


async def test_users_are_listed_oldest_first(store: Store) -> None:
    assert await store.list_users() == []
    users = await add_users(store, 4)
    assert await store.list_users() == users


async def test_set_user_active(store: Store) -> None:
    first, second = await add_users(store, 2)
    deactivated = await store.set_user_active(first.id, False)
    assert deactivated == first.replace(active=False)
    assert await store.get_user(first.id) == deactivated
    assert await store.get_user(second.id) == second
    assert await store.set_user_active(first.id, True) == first
    with pytest.raises(UserNotFound):
        await store.set_user_active("0123456789ab", False)


# -- API keys ---------------------------------------------------------------------------------


async def test_every_key_field_round_trips(store: Store) -> None:
    [user] = await add_users(store, 1)
    key = make_key(user, 1).replace(
        revoked_at=BASE_TIME + timedelta(days=1, microseconds=3),
        last_used_at=BASE_TIME + timedelta(hours=5, microseconds=999_999),
    )
    await store.add_api_key(key)
    assert await store.get_api_key(key.id) == key


async def test_unknown_key_raises_api_key_not_found(store: Store) -> None:
    [user] = await add_users(store, 1)
    await store.add_api_key(make_key(user, 1))
    with pytest.raises(ApiKeyNotFound, match="0123456789ab"):
        await store.get_api_key("0123456789ab")
    with pytest.raises(ApiKeyNotFound):
        await store.revoke_api_key("0123456789ab", BASE_TIME)


async def test_a_key_needs_a_known_user(store: Store) -> None:
    ghost = make_user(1)
    with pytest.raises(UserNotFound):
        await store.add_api_key(make_key(ghost, 1))
    assert await store.list_api_keys() == []


async def test_keys_are_listed_oldest_first_for_all_or_one_user(store: Store) -> None:
    ann, bob = await add_users(store, 2)
    keys = [make_key(owner, n) for n, owner in enumerate([ann, bob, ann, ann])]
    for key in keys:
        await store.add_api_key(key)
    assert await store.list_api_keys() == keys
    assert await store.list_api_keys(ann.id) == [keys[0], keys[2], keys[3]]
    assert await store.list_api_keys(bob.id) == [keys[1]]
    assert await store.list_api_keys("0123456789ab") == []


async def test_revoking_keeps_the_first_revocation_time(store: Store) -> None:
    [user] = await add_users(store, 1)
    key, other = make_key(user, 1), make_key(user, 2)
    await store.add_api_key(key)
    await store.add_api_key(other)
    revoked_at = BASE_TIME + timedelta(days=2)
    assert await store.revoke_api_key(key.id, revoked_at) == key.replace(revoked_at=revoked_at)
    again = await store.revoke_api_key(key.id, revoked_at + timedelta(days=1))
    assert again.revoked_at == revoked_at
    assert await store.get_api_key(key.id) == again
    assert await store.get_api_key(other.id) == other


async def test_touching_a_key_changes_only_its_last_use(store: Store) -> None:
    [user] = await add_users(store, 1)
    key = make_key(user, 1)
    await store.add_api_key(key)
    revoked_at = BASE_TIME + timedelta(days=2)
    await store.revoke_api_key(key.id, revoked_at)
    used_at = BASE_TIME + timedelta(days=3)
    await store.touch_api_key(key.id, used_at)  # e.g. a request checked just before the revoke
    stored = await store.get_api_key(key.id)
    assert stored == key.replace(revoked_at=revoked_at, last_used_at=used_at)
    await store.touch_api_key("0123456789ab", used_at)  # an unknown key: nothing to do


# -- dashboard sessions -----------------------------------------------------------------------


async def add_key(store: Store) -> ApiKey:
    [user] = await add_users(store, 1)
    key = make_key(user, 1)
    await store.add_api_key(key)
    return key


async def test_every_session_field_round_trips(store: Store) -> None:
    key = await add_key(store)
    session = make_session(key, 1)
    await store.add_session(session)
    assert await store.get_session(session.token_hash) == session
    assert (await store.get_session(session.token_hash)).expires_at.utcoffset() == timedelta(0)


async def test_unknown_session_raises_session_not_found(store: Store) -> None:
    key = await add_key(store)
    await store.add_session(make_session(key, 1))
    with pytest.raises(SessionNotFound):
        await store.get_session("0" * 64)


async def test_a_session_needs_a_known_key(store: Store) -> None:
    [user] = await add_users(store, 1)
    session = make_session(make_key(user, 1), 1)
    with pytest.raises(ApiKeyNotFound):
        await store.add_session(session)
    with pytest.raises(SessionNotFound):
        await store.get_session(session.token_hash)


async def test_a_deleted_session_is_gone_for_every_store(new_store: StoreFactory) -> None:
    """A sign-out through one API process: the others refuse the session at once."""
    async with new_store() as first, new_store() as second:
        key = await add_key(first)
        gone, kept = make_session(key, 1), make_session(key, 2)
        await first.add_session(gone)
        await first.add_session(kept)
        assert await second.get_session(gone.token_hash) == gone
        await first.delete_session(gone.token_hash)
        with pytest.raises(SessionNotFound):
            await second.get_session(gone.token_hash)
        assert await second.get_session(kept.token_hash) == kept
        await second.delete_session(gone.token_hash)  # already gone: nothing to do


async def test_expired_sessions_are_deleted_and_counted(store: Store) -> None:
    key = await add_key(store)
    sessions = [make_session(key, n) for n in range(4)]  # expire at hours 1, 2, 3, 4
    for session in sessions:
        await store.add_session(session)
    assert await store.delete_expired_sessions(sessions[1].expires_at) == 2
    for session in sessions[:2]:
        with pytest.raises(SessionNotFound):
            await store.get_session(session.token_hash)
    for session in sessions[2:]:
        assert await store.get_session(session.token_hash) == session
    assert await store.delete_expired_sessions(sessions[1].expires_at) == 0


# -- jobs and their owners --------------------------------------------------------------------


async def test_a_jobs_owner_round_trips(store: Store) -> None:
    owned, unowned = make_job(1, owner_id="0a1b2c3d4e5f"), make_job(2)
    await store.add_job(owned)
    await store.add_job(unowned)
    assert (await store.get_job(owned.id)).owner_id == "0a1b2c3d4e5f"
    assert (await store.get_job(unowned.id)).owner_id is None


async def test_listing_by_owner_pages_through_their_jobs_only(store: Store) -> None:
    unowned = await add_jobs(store, 3)
    owners = ["ann", "bob", None]
    owned = [make_job(10 + n, owner_id=owners[n % 3]) for n in range(30)]
    for job in owned:
        await store.add_job(job)
    anns = [job.id for job in reversed(owned) if job.owner_id == "ann"]

    seen: list[str] = []
    before: str | None = None
    for _ in range(5):
        page = await store.list_jobs(limit=4, before=before, owner_id="ann")
        if not page:
            break
        assert all(job.owner_id == "ann" for job in page)
        seen.extend(job.id for job in page)
        before = page[-1].id
    assert seen == anns
    everyone = await store.list_jobs(limit=1000)
    assert len(everyone) == len(unowned) + len(owned)  # no filter: every job, ownerless too


async def test_paging_by_owner_from_another_owners_job_is_job_not_found(store: Store) -> None:
    ann, bob = make_job(1, owner_id="ann"), make_job(2, owner_id="bob")
    await store.add_job(ann)
    await store.add_job(bob)
    with pytest.raises(JobNotFound):
        await store.list_jobs(before=bob.id, owner_id="ann")
    assert await store.list_jobs(before=bob.id) == [ann]
    assert await store.list_jobs(owner_id="carol") == []


async def test_users_and_keys_survive_reopening(new_store: StoreFactory) -> None:
    async with new_store() as first:
        users = await add_users(first, 2)
        key = make_key(users[1], 1)
        await first.add_api_key(key)
    async with new_store() as reopened:
        assert await reopened.list_users() == users
        assert await reopened.get_api_key(key.id) == key


# -- SQLite only ------------------------------------------------------------------------------


async def test_sqlite_migration_keeps_older_jobs_without_owner(tmp_path: Path) -> None:
    """A database from before users: its jobs stay, with no owner (admins only)."""
    path = tmp_path / "old.db"
    owners_migration = next(n for n, m in enumerate(MIGRATIONS) if "owner_id" in m)
    with contextlib.closing(sqlite3.connect(path)) as db:
        for number, script in enumerate(MIGRATIONS[:owners_migration], start=1):
            db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")
        db.execute(
            "INSERT INTO jobs (id, status, created_at, timeout_seconds, pytest_args) "
            "VALUES ('0123456789ab', 'succeeded', ?, 60, '[]')",
            (BASE_TIME.isoformat(timespec="microseconds"),),
        )
        db.commit()

    async with SqliteStore(path) as store:
        old = await store.get_job("0123456789ab")
        assert old.owner_id is None
        assert old.project is None
        assert await store.list_jobs(owner_id="0a1b2c3d4e5f") == []
        assert [job.id for job in await store.list_jobs()] == ["0123456789ab"]
        [user] = await add_users(store, 1)
        assert await store.get_user(user.id) == user
