"""Dashboard sessions: a signed cookie naming the API key a person signed in with.

The cookie reads `<key id>.<expiry>.<nonce>.<mac>`. Its MAC (HMAC-SHA256) is keyed with the
server's session secret and covers the key's stored hash too: neither the secret alone nor
the database alone can make one, and every API process sharing both accepts it. Each request
reads the key again (`accounts.holder`): revoking it or deactivating its user ends its
sessions at once. Signing out drops the cookie in the browser and its nonce in this process.

A session's CSRF token is another MAC, of its nonce: a page from another site cannot read it,
so it cannot send it with a forged form.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ci_server.settings import Settings
from ci_server.users import ApiKey

SESSION_COOKIE = "ci_session"
SESSION_SECONDS = 12 * 3600
"""How long a session lasts; then the person signs in again."""
SECRET_FILE = "session-secret"
ANONYMOUS_NONCE = "anonymous"
"""The session of everyone when authentication is off (CI_AUTH=off): it has a CSRF token too."""


@dataclass(frozen=True, slots=True)
class Session:
    key_id: str
    expires: int
    """Unix time."""
    nonce: str
    mac: str = ""

    @property
    def signed_part(self) -> str:
        return f"{self.key_id}.{self.expires}.{self.nonce}"

    @property
    def cookie(self) -> str:
        return f"{self.signed_part}.{self.mac}"

    @classmethod
    def parse(cls, cookie: str) -> Session | None:
        parts = cookie.split(".")
        if len(parts) != 4 or not parts[1].isdigit():
            return None
        key_id, expires, nonce, mac = parts
        return cls(key_id, int(expires), nonce, mac)


class SessionSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._signed_out: dict[str, int] = {}
        """Nonces of sessions signed out in this process, until they expire."""

    def _mac(self, message: str) -> str:
        return hmac.new(self._secret, message.encode(), hashlib.sha256).hexdigest()

    def issue(self, key: ApiKey, now: float | None = None) -> Session:
        expires = int(now if now is not None else time.time()) + SESSION_SECONDS
        session = Session(key.id, expires, secrets.token_urlsafe(16))
        return Session(key.id, expires, session.nonce, self._mac_of(session, key))

    def _mac_of(self, session: Session, key: ApiKey) -> str:
        return self._mac(f"session:{session.signed_part}:{key.hash}")

    def valid(self, session: Session, key: ApiKey, now: float | None = None) -> bool:
        """Whether the session was made by this server for `key`, is unexpired, and not
        signed out here."""
        now = now if now is not None else time.time()
        return (
            session.key_id == key.id
            and session.expires > now
            and session.nonce not in self._signed_out
            and hmac.compare_digest(session.mac, self._mac_of(session, key))
        )

    def sign_out(self, session: Session, now: float | None = None) -> None:
        now = now if now is not None else time.time()
        self._signed_out = {n: t for n, t in self._signed_out.items() if t > now}
        self._signed_out[session.nonce] = session.expires

    def csrf_token(self, nonce: str) -> str:
        return self._mac(f"csrf:{nonce}")

    def csrf_valid(self, nonce: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token, self.csrf_token(nonce))


def load_secret(settings: Settings) -> bytes:
    """CI_SESSION_SECRET, or a random secret kept in the data folder (made once, 0600)."""
    if settings.session_secret is not None:
        return settings.session_secret.get_secret_value().encode()
    path = settings.resolved_data_dir / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return _create_secret(path)


def _create_secret(path: Path) -> bytes:
    """Written aside, then linked into place: a process reading it never sees it half
    written, and of two processes making it at once, one secret wins for both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secrets.token_hex(32).encode())
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(aside, path)
    finally:
        aside.unlink()
    return path.read_bytes()
