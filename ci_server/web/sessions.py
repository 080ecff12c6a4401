"""Dashboard sessions in the browser: the cookie that holds a session's token, and the check
of a form's CSRF token.

The session itself lives in the store (`accounts.start_session`), which keeps only the
token's SHA-256: every API process sharing the database accepts it, and a sign-out through
any of them ends it for all. A session's CSRF token is random and stored with it; a page
from another site cannot read it, so it cannot send it with a forged form.
"""

from __future__ import annotations

import hmac

from fastapi import Request, Response

from ci_server.accounts import SESSION_LIFETIME

SESSION_COOKIE = "ci_session"
SESSION_SECONDS = int(SESSION_LIFETIME.total_seconds())


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def drop_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")


def csrf_valid(expected: str, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())
