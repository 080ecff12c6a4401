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

from ci_server.accounts import NO_SESSION, session_holder
from ci_server.users import ANONYMOUS_ADMIN, NotAuthenticated, Session, User
from ci_server.web.sessions import SESSION_COOKIE


@dataclass(frozen=True, slots=True)
class Viewer:
    user: User
    session: Session | None
    """None for everyone when authentication is off (CI_AUTH=off)."""
    csrf_token: str

    @property
    def can_sign_out(self) -> bool:
        return self.session is not None


class SignInRequired(Exception):
    """A page was asked for without a valid session: answered with a redirect to sign in."""

    def __init__(self, after: str) -> None:
        super().__init__(after)
        self.after = after


async def viewer_of(connection: HTTPConnection) -> Viewer:
    """The viewer of the session cookie; NotAuthenticated if there is none that works."""
    if not connection.app.state.settings.auth:
        return Viewer(ANONYMOUS_ADMIN, None, connection.app.state.anonymous_csrf_token)
    token = connection.cookies.get(SESSION_COOKIE)
    if not token:
        raise NotAuthenticated(NO_SESSION)
    user, session = await session_holder(connection.app.state.store, token)
    return Viewer(user, session, session.csrf_token)


async def page_viewer(request: Request) -> Viewer:
    try:
        return await viewer_of(request)
    except NotAuthenticated:
        raise SignInRequired(request.url.path) from None


PageViewer = Annotated[Viewer, Depends(page_viewer)]
"""For pages: without a session, a redirect to the sign-in page."""
FetchViewer = Annotated[Viewer, Depends(viewer_of)]
"""For what pages load (streams, fragments): without a session, 401."""
