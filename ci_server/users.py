"""Who may do what: users, their API keys, their dashboard sessions, and which jobs a user may
see. No storage, no HTTP.

An API key reads `ci_<key id>_<secret>`. The key id (12 hex digits, public: it is shown by
`ci-admin key list`) finds the stored key; the secret is 256 random bits and only its
SHA-256 is stored. See `hash_secret` for why a fast hash is the right one here. A session's
token is 256 random bits too, and likewise only its SHA-256 is stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ci_server.models import CIError, Job, new_job_id, utcnow

KEY_PREFIX = "ci_"
SECRET_BYTES = 32
"""256 bits from `secrets`: no key can be guessed, with or without its hash."""


def new_user_id() -> str:
    return new_job_id()


def new_key_id() -> str:
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class User:
    id: str
    name: str
    email: str
    is_admin: bool = False
    active: bool = True
    created_at: datetime = field(default_factory=utcnow)

    def replace(self, **changes: Any) -> User:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    user_id: str
    name: str
    hash: str
    """SHA-256 of the secret, hex; the key itself is never stored."""
    created_at: datetime = field(default_factory=utcnow)
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def replace(self, **changes: Any) -> ApiKey:
        return dataclasses.replace(self, **changes)

    def matches(self, secret: str) -> bool:
        """Constant-time comparison of the secret's hash with the stored one."""
        return hmac.compare_digest(hash_secret(secret), self.hash)


@dataclass(frozen=True, slots=True)
class Session:
    """A person signed in to the dashboard with an API key: it works while the key does (not
    revoked, its user active) until `expires_at`, or until it is signed out (deleted)."""

    token_hash: str
    """SHA-256 of the token the browser holds (its cookie), hex; the token is never stored."""
    key_id: str
    csrf_token: str
    """What the session's forms carry (the page shows it; another site cannot read it)."""
    created_at: datetime
    expires_at: datetime

    def replace(self, **changes: Any) -> Session:
        return dataclasses.replace(self, **changes)


ANONYMOUS_ADMIN = User(id="anonymous", name="anonymous", email="anonymous@localhost", is_admin=True)
"""Who every request is when the server runs without authentication (CI_AUTH=off)."""


# -- errors -----------------------------------------------------------------------------------


class NotAuthenticated(CIError):
    """No key, a key that is not one, revoked, or its user deactivated."""


class NotAllowed(CIError):
    """The user is who they say, and may not do this (an admin's only)."""


class AccountError(CIError):
    """A request about users or keys that cannot be done (for `ci-admin`)."""


class UserNotFound(AccountError):
    pass


class ApiKeyNotFound(AccountError):
    pass


class SessionNotFound(AccountError):
    pass


class EmailTaken(AccountError):
    def __init__(self, email: str) -> None:
        super().__init__(f"a user with email {email!r} already exists")
        self.email = email


class UserInactive(AccountError):
    pass


class InvalidAccount(AccountError):
    """A name or email that cannot be used."""


# -- keys -------------------------------------------------------------------------------------


def hash_secret(secret: str) -> str:
    """SHA-256 of a key's secret, hex.

    A fast hash is right for API keys, unlike passwords: the secret is 256 bits from
    `secrets`, so there is no dictionary to try and brute force is hopeless however fast the
    hash. A slow hash (bcrypt, scrypt) would only slow down every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_key(user_id: str, name: str) -> tuple[ApiKey, str]:
    """A new key for the user: the record to store, and the key to show once."""
    key_id = new_key_id()
    secret = secrets.token_urlsafe(SECRET_BYTES)
    record = ApiKey(id=key_id, user_id=user_id, name=name, hash=hash_secret(secret))
    return record, f"{KEY_PREFIX}{key_id}_{secret}"


def issue_session(key: ApiKey, lifetime: timedelta) -> tuple[Session, str]:
    """A new session made with the key, from now for `lifetime`: the record to store, and
    the token for the browser."""
    token = secrets.token_urlsafe(SECRET_BYTES)
    now = utcnow()
    record = Session(
        token_hash=hash_secret(token),
        key_id=key.id,
        csrf_token=secrets.token_urlsafe(SECRET_BYTES),
        created_at=now,
        expires_at=now + lifetime,
    )
    return record, token


def parse_key(key: str) -> tuple[str, str]:
    """(key id, secret) of a key as issued; NotAuthenticated if it cannot be one."""
    key_id, _, secret = key.removeprefix(KEY_PREFIX).partition("_")
    well_formed = (
        key.startswith(KEY_PREFIX)
        and len(key_id) == 12
        and all(c in "0123456789abcdef" for c in key_id)
        and secret
    )
    if not well_formed:
        raise NotAuthenticated(f"malformed API key: it should read {KEY_PREFIX}<id>_<secret>")
    return key_id, secret


# -- who sees what ---------------------------------------------------------------------------


def can_see(user: User, job: Job) -> bool:
    """Admins see every job; a user only their own (a job with no owner: admins only)."""
    return user.is_admin or (job.owner_id is not None and job.owner_id == user.id)


def owner_filter(user: User) -> str | None:
    """The owner to list jobs of: the user's own, or None (every job) for an admin."""
    return None if user.is_admin else user.id
