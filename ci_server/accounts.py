"""What `ci-admin`, the API and the dashboard do with users, keys and sessions, over any
AccountStore.

The rules live here once: how emails are compared, who may get a key, and what makes a
presented key or a dashboard session valid. `ci_server.admin` prints, `ci_server.api.auth`
and `ci_server.web` answer HTTP.
"""

from __future__ import annotations

import re
from datetime import timedelta

from ci_server.models import utcnow
from ci_server.store.repository import AccountStore
from ci_server.users import (
    ApiKey,
    ApiKeyNotFound,
    InvalidAccount,
    NotAuthenticated,
    Session,
    SessionNotFound,
    User,
    UserInactive,
    UserNotFound,
    hash_secret,
    issue_key,
    issue_session,
    new_user_id,
    parse_key,
)

EMAIL = re.compile(r"[^@\s]+@[^@\s]+")
MAX_NAME_CHARS = 200
LAST_USED_PRECISION = timedelta(minutes=1)
"""`last_used_at` is written at most this often per key: not one write per request."""
RECHECK_SECONDS = 2.0
"""How soon what a key holds open learns that it was revoked or its user deactivated (by
`ci-admin`, in another process): open event streams close, a user's queued jobs cancel."""
INVALID_KEY = "invalid API key"
"""One answer for an unknown key id and a wrong secret: a guess learns nothing."""
SESSION_LIFETIME = timedelta(hours=12)
"""How long a dashboard session lasts; then the person signs in again."""
NO_SESSION = "not signed in, or the session has ended: sign in again"
"""One answer for a token never issued, signed out or expired."""


def normalize_email(email: str) -> str:
    """Emails are compared without case and surrounding blanks."""
    normalized = email.strip().lower()
    if not EMAIL.fullmatch(normalized):
        raise InvalidAccount(f"not an email address: {email!r}")
    return normalized


def _checked_name(name: str, what: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS:
        raise InvalidAccount(f"{what} must have 1 to {MAX_NAME_CHARS} characters")
    return name


async def create_user(
    store: AccountStore, *, name: str, email: str, is_admin: bool = False
) -> User:
    """EmailTaken if the email is in use, InvalidAccount for an empty name or a bad email."""
    user = User(
        id=new_user_id(),
        name=_checked_name(name, "a user's name"),
        email=normalize_email(email),
        is_admin=is_admin,
    )
    await store.add_user(user)
    return user


async def user_by_email(store: AccountStore, email: str) -> User:
    return await store.get_user_by_email(normalize_email(email))


async def deactivate_user(store: AccountStore, email: str) -> User:
    """The user's keys stop working at once (they are kept, to show in `key list`); within
    RECHECK_SECONDS their open streams close and the server cancels their queued jobs."""
    user = await user_by_email(store, email)
    return await store.set_user_active(user.id, False)


async def is_active(store: AccountStore, user_id: str | None) -> bool:
    """Whether a job's owner may still have it run. No owner, or one the store does not
    know (the anonymous admin of CI_AUTH=off), is no one to lock out."""
    if user_id is None:
        return True
    try:
        return (await store.get_user(user_id)).active
    except UserNotFound:
        return True


async def create_key(store: AccountStore, *, email: str, name: str) -> tuple[ApiKey, User, str]:
    """A new key for an active user: (stored record, its user, the key to show once)."""
    user = await user_by_email(store, email)
    if not user.active:
        raise UserInactive(f"user {user.email} is deactivated: no key can be created for them")
    record, key = issue_key(user.id, _checked_name(name, "a key's name"))
    await store.add_api_key(record)
    return record, user, key


async def revoke_key(store: AccountStore, key_id: str) -> ApiKey:
    """Revoke the key (a revoked one stays as it was)."""
    return await store.revoke_api_key(key_id, utcnow())


async def authenticate(store: AccountStore, key: str | None) -> User:
    """The active user a presented key belongs to; NotAuthenticated says what is wrong."""
    _, user = await _key_and_holder(store, key)
    return user


async def _key_and_holder(store: AccountStore, key: str | None) -> tuple[ApiKey, User]:
    if not key:
        raise NotAuthenticated("no API key: send the header `Authorization: Bearer ci_...`")
    key_id, secret = parse_key(key)
    try:
        record = await store.get_api_key(key_id)
    except ApiKeyNotFound:
        raise NotAuthenticated(INVALID_KEY) from None
    if not record.matches(secret):
        raise NotAuthenticated(INVALID_KEY)
    user = await holder(store, record)
    now = utcnow()
    if record.last_used_at is None or now - record.last_used_at >= LAST_USED_PRECISION:
        await store.touch_api_key(record.id, now)
    return record, user


async def holder(store: AccountStore, record: ApiKey) -> User:
    """The active user a stored key belongs to, if it still works (not revoked, its user
    active): what a key, or a dashboard session made with one, is checked for each time."""
    if record.revoked:
        raise NotAuthenticated(f"API key {record.id} ({record.name}) has been revoked")
    user = await store.get_user(record.user_id)
    if not user.active:
        raise NotAuthenticated(f"user {user.email} has been deactivated")
    return user


async def start_session(store: AccountStore, key: str) -> tuple[Session, str]:
    """Sign in to the dashboard with a presented key: the stored session and the token for
    the browser. Sessions that have expired are forgotten meanwhile."""
    record, _ = await _key_and_holder(store, key)
    await store.delete_expired_sessions(utcnow())
    session, token = issue_session(record, SESSION_LIFETIME)
    await store.add_session(session)
    return session, token


async def session_holder(store: AccountStore, token: str) -> tuple[User, Session]:
    """The active user of a session's token and the session, while it works: stored (not
    signed out), unexpired, its key not revoked and its user active."""
    try:
        session = await store.get_session(hash_secret(token))
        record = await store.get_api_key(session.key_id)
    except (SessionNotFound, ApiKeyNotFound):
        raise NotAuthenticated(NO_SESSION) from None
    if session.expires_at <= utcnow():
        raise NotAuthenticated(NO_SESSION)
    return await holder(store, record), session


async def end_session(store: AccountStore, session: Session) -> None:
    """Sign out: every process refuses the session's token from now on."""
    await store.delete_session(session.token_hash)
