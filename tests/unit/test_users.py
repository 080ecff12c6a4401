"""API keys (issue, parse, verify), who sees which job, and the account rules over a store."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import timedelta

import pytest

from ci_server import accounts, users
from ci_server.models import Job, new_job_id
from ci_server.store.memory import MemoryStore
from ci_server.users import (
    EmailTaken,
    InvalidAccount,
    NotAuthenticated,
    SessionNotFound,
    User,
    UserInactive,
    UserNotFound,
    can_see,
    hash_secret,
    issue_key,
    owner_filter,
    parse_key,
)

KEY_FORMAT = re.compile(r"ci_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
"""43 url-safe characters: 32 random bytes in base64 without padding."""


# -- keys -------------------------------------------------------------------------------------


def test_an_issued_key_reads_ci_id_secret_and_only_its_hash_is_kept() -> None:
    record, key = issue_key("0a1b2c3d4e5f", "laptop")
    match = KEY_FORMAT.fullmatch(key)
    assert match, key
    key_id, secret = match.groups()
    assert (record.id, record.user_id, record.name) == (key_id, "0a1b2c3d4e5f", "laptop")
    assert record.hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(record)
    assert record.revoked_at is None
    assert record.last_used_at is None


def test_keys_are_never_the_same() -> None:
    keys = {issue_key("0a1b2c3d4e5f", "k")[1] for _ in range(200)}
    assert len(keys) == 200
    assert len({KEY_FORMAT.fullmatch(k).group(1) for k in keys}) == 200  # type: ignore[union-attr]


def test_parse_key_splits_at_the_first_underscore_after_the_id() -> None:
    assert parse_key("ci_0a1b2c3d4e5f_sec_ret-_") == ("0a1b2c3d4e5f", "sec_ret-_")
    record, key = issue_key("0a1b2c3d4e5f", "k")
    key_id, secret = parse_key(key)
    assert key_id == record.id
    assert record.matches(secret)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "ci_",
        "ci_0a1b2c3d4e5f",
        "ci_0a1b2c3d4e5f_",
        "ci_0A1B2C3D4E5F_secret",
        "ci_0a1b2c3d4e_secret",
        "ci_0a1b2c3d4e5f0_secret",
        "xx_0a1b2c3d4e5f_secret",
        "0a1b2c3d4e5f_secret",
    ],
)
def test_malformed_keys_are_not_authenticated(key: str) -> None:
    with pytest.raises(NotAuthenticated, match="malformed API key"):
        parse_key(key)


def test_verification_compares_hashes_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    record, key = issue_key("0a1b2c3d4e5f", "k")
    _, secret = parse_key(key)
    compared: list[tuple[str, str]] = []
    compare_digest = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(users.hmac, "compare_digest", spy)
    assert record.matches(secret)
    assert not record.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not record.matches("")
    assert compared[0] == (hash_secret(secret), record.hash)
    assert len(compared) == 3


# -- who sees what ----------------------------------------------------------------------------


ANN = User(id="aaaaaaaaaaaa", name="Ann", email="ann@example.com")
BOB = User(id="bbbbbbbbbbbb", name="Bob", email="bob@example.com")
ADMIN = User(id="cccccccccccc", name="Root", email="root@example.com", is_admin=True)


def test_a_user_sees_only_their_own_jobs_and_an_admin_sees_all() -> None:
    anns, unowned = Job(id=new_job_id(), owner_id=ANN.id), Job(id=new_job_id())
    assert can_see(ANN, anns)
    assert not can_see(BOB, anns)
    assert not can_see(ANN, unowned)  # from before users existed: admins only
    assert can_see(ADMIN, anns)
    assert can_see(ADMIN, unowned)
    assert (owner_filter(ANN), owner_filter(ADMIN)) == (ANN.id, None)


# -- accounts ---------------------------------------------------------------------------------


@pytest.fixture
async def store() -> MemoryStore:
    return MemoryStore()


async def test_emails_are_compared_without_case_or_blanks(store: MemoryStore) -> None:
    user = await accounts.create_user(store, name="  Ann ", email=" Ann@Example.COM ")
    assert (user.name, user.email, user.is_admin, user.active) == (
        "Ann",
        "ann@example.com",
        False,
        True,
    )
    with pytest.raises(EmailTaken):
        await accounts.create_user(store, name="Other", email="ANN@example.com")
    assert await accounts.user_by_email(store, "ann@EXAMPLE.com") == user


@pytest.mark.parametrize(
    ("name", "email"), [("", "a@b.c"), ("   ", "a@b.c"), ("A", "nope"), ("A", "a b@c.d")]
)
async def test_bad_names_and_emails_are_refused(store: MemoryStore, name: str, email: str) -> None:
    with pytest.raises(InvalidAccount):
        await accounts.create_user(store, name=name, email=email)
    assert await store.list_users() == []


async def test_keys_only_for_known_active_users(store: MemoryStore) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    with pytest.raises(UserNotFound, match="nobody"):
        await accounts.create_key(store, email="nobody@example.com", name="k")
    await accounts.deactivate_user(store, "ann@example.com")
    with pytest.raises(UserInactive):
        await accounts.create_key(store, email="ann@example.com", name="k")
    assert await store.list_api_keys() == []


async def test_authenticate_returns_the_keys_user(store: MemoryStore) -> None:
    ann = await accounts.create_user(store, name="Ann", email="ann@example.com")
    record, user, key = await accounts.create_key(store, email="ann@example.com", name="laptop")
    assert user == ann
    assert await accounts.authenticate(store, key) == ann
    assert (await store.get_api_key(record.id)).last_used_at is not None


async def test_last_use_is_written_at_most_once_a_minute(store: MemoryStore) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    record, _, key = await accounts.create_key(store, email="ann@example.com", name="k")
    await accounts.authenticate(store, key)
    first = (await store.get_api_key(record.id)).last_used_at
    await accounts.authenticate(store, key)
    assert (await store.get_api_key(record.id)).last_used_at == first
    assert first is not None
    await store.touch_api_key(record.id, first - accounts.LAST_USED_PRECISION)
    await accounts.authenticate(store, key)
    later = (await store.get_api_key(record.id)).last_used_at
    assert later is not None
    assert later - first < timedelta(seconds=30)  # written again: it was a minute old


async def test_what_is_wrong_with_a_key_is_said(store: MemoryStore) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    record, _, key = await accounts.create_key(store, email="ann@example.com", name="laptop")
    key_id, secret = parse_key(key)
    unknown_id = f"ci_{'0' * 12}_{secret}"
    wrong_secret = f"ci_{key_id}_{secret[::-1]}"

    cases = {
        None: "no API key",
        "": "no API key",
        "ci_nope": "malformed API key",
        unknown_id: "invalid API key",
        wrong_secret: "invalid API key",  # the same words: a guess learns nothing
    }
    for presented, message in cases.items():
        with pytest.raises(NotAuthenticated, match=message):
            await accounts.authenticate(store, presented)

    await accounts.revoke_key(store, record.id)
    with pytest.raises(
        NotAuthenticated, match=f"API key {record.id} \\(laptop\\) has been revoked"
    ):
        await accounts.authenticate(store, key)
    with pytest.raises(NotAuthenticated, match="invalid API key"):
        await accounts.authenticate(store, wrong_secret)  # revoked or not: still just invalid


async def test_a_deactivated_users_keys_stop_working(store: MemoryStore) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    _, _, key = await accounts.create_key(store, email="ann@example.com", name="k")
    await accounts.deactivate_user(store, "ann@example.com")
    with pytest.raises(NotAuthenticated, match=r"ann@example\.com has been deactivated"):
        await accounts.authenticate(store, key)


# -- dashboard sessions -----------------------------------------------------------------------


async def test_a_session_keeps_only_its_tokens_hash_and_works_until_signed_out(
    store: MemoryStore,
) -> None:
    ann = await accounts.create_user(store, name="Ann", email="ann@example.com")
    record, _, key = await accounts.create_key(store, email="ann@example.com", name="k")
    session, token = await accounts.start_session(store, key)
    assert (session.token_hash, session.key_id) == (hash_secret(token), record.id)
    assert token not in repr(session)
    assert session.expires_at - session.created_at == accounts.SESSION_LIFETIME
    assert await accounts.session_holder(store, token) == (ann, session)
    other, other_token = await accounts.start_session(store, key)
    assert len({token, other_token, session.csrf_token, other.csrf_token}) == 4
    await accounts.end_session(store, session)
    for ended in (token, "", "not-a-token"):
        with pytest.raises(NotAuthenticated, match="sign in again"):
            await accounts.session_holder(store, ended)
    assert await accounts.session_holder(store, other_token) == (ann, other)


async def test_signing_in_needs_a_working_key(store: MemoryStore) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    record, _, key = await accounts.create_key(store, email="ann@example.com", name="k")
    await accounts.revoke_key(store, record.id)
    with pytest.raises(NotAuthenticated, match="revoked"):
        await accounts.start_session(store, key)
    with pytest.raises(NotAuthenticated, match="invalid API key"):
        await accounts.start_session(store, key + "x")


async def test_revoking_the_key_or_deactivating_the_user_ends_its_sessions(
    store: MemoryStore,
) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    await accounts.create_user(store, name="Bob", email="bob@example.com")
    ann_key, _, ann = await accounts.create_key(store, email="ann@example.com", name="k")
    _, _, bob = await accounts.create_key(store, email="bob@example.com", name="k")
    _, ann_token = await accounts.start_session(store, ann)
    _, bob_token = await accounts.start_session(store, bob)
    await accounts.revoke_key(store, ann_key.id)
    with pytest.raises(NotAuthenticated, match="revoked"):
        await accounts.session_holder(store, ann_token)
    await accounts.deactivate_user(store, "bob@example.com")
    with pytest.raises(NotAuthenticated, match="deactivated"):
        await accounts.session_holder(store, bob_token)


async def test_an_expired_session_is_refused_and_forgotten_at_the_next_sign_in(
    store: MemoryStore,
) -> None:
    await accounts.create_user(store, name="Ann", email="ann@example.com")
    _, _, key = await accounts.create_key(store, email="ann@example.com", name="k")
    old, old_token = await accounts.start_session(store, key)
    expired = old.replace(expires_at=old.created_at)
    await store.delete_session(old.token_hash)
    await store.add_session(expired)
    with pytest.raises(NotAuthenticated, match="sign in again"):
        await accounts.session_holder(store, old_token)
    await accounts.start_session(store, key)
    with pytest.raises(SessionNotFound):
        await store.get_session(old.token_hash)
