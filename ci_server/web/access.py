"""Who is looking at a page: the user of the request's session cookie.

Pages send a person without a valid session to the sign-in page (`SignInRequired`); the
streams and fragments that pages load answer 401 instead (NotAuthenticated, api/errors.py).
With CI_AUTH=off everyone is the anonymous admin, as in the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from ci_server.accounts import holder
from ci_server.users import ANONYMOUS_ADMIN, ApiKeyNotFound, NotAuthenticated, User
from ci_server.web.sessions import ANONYMOUS_NONCE, SESSION_COOKIE, Session, SessionSigner

SIGNED_OUT = "not signed in, or the session has ended: sign in again"


@dataclass(frozen=True, slots=True)
class Viewer:
    user: User
    session: Session
    csrf_token: str

    @property
    def can_sign_out(self) -> bool:
        return self.session.nonce != ANONYMOUS_NONCE


class SignInRequired(Exception):
    """A page was asked for without a valid session: answered with a redirect to sign in."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


def signer(connection: HTTPConnection) -> SessionSigner:
    return connection.app.state.sessions


async def viewer_of(connection: HTTPConnection) -> Viewer:
    """The viewer of the session cookie; NotAuthenticated if there is none that works."""
    sessions = signer(connection)
    if not connection.app.state.settings.auth:
        anonymous = Session(ANONYMOUS_NONCE, 0, ANONYMOUS_NONCE)
        return Viewer(ANONYMOUS_ADMIN, anonymous, sessions.csrf_token(ANONYMOUS_NONCE))
    session = Session.parse(connection.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        raise NotAuthenticated(SIGNED_OUT)
    store = connection.app.state.store
    try:
        key = await store.get_api_key(session.key_id)
    except ApiKeyNotFound:
        raise NotAuthenticated(SIGNED_OUT) from None
    if not sessions.valid(session, key):
        raise NotAuthenticated(SIGNED_OUT)
    user = await holder(store, key)
    return Viewer(user, session, sessions.csrf_token(session.nonce))


async def page_viewer(request: Request) -> Viewer:
    try:
        return await viewer_of(request)
    except NotAuthenticated:
        raise SignInRequired(request.url.path) from None


PageViewer = Annotated[Viewer, Depends(page_viewer)]
"""For pages: without a session, a redirect to the sign-in page."""
FetchViewer = Annotated[Viewer, Depends(viewer_of)]
"""For what pages load (streams, fragments): without a session, 401."""
