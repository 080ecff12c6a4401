"""Who is asking: the request's Bearer API key resolved to its user.

Every route but /health depends on `current_user`. With CI_AUTH=off (allowed on loopback
only, see `ci_server.__main__`) every request is the built-in anonymous admin.
`AuthenticateUploads` runs the same check for uploads before their body is read.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ci_server.accounts import authenticate
from ci_server.api.errors import error_response
from ci_server.users import ANONYMOUS_ADMIN, NotAuthenticated, User

USER_SCOPE_KEY = "ci.user"
"""Where AuthenticateUploads leaves the user it found, for `current_user` to reuse."""
UPLOAD_ROUTES = frozenset({("POST", "/jobs")})

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="API key",
    description="A key from `ci-admin key create`, sent as `Authorization: Bearer ci_...`.",
)


async def resolve_user(connection: HTTPConnection) -> User:
    """The user the request acts as; NotAuthenticated says what is wrong with its key."""
    if not connection.app.state.settings.auth:
        return ANONYMOUS_ADMIN
    key: str | None = None
    header = connection.headers.get("authorization")
    if header is not None:
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise NotAuthenticated("the Authorization header must read `Bearer ci_...`")
    return await authenticate(connection.app.state.store, key)


async def current_user(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    """The dependency (`_bearer` declares the scheme in the OpenAPI schema)."""
    checked = request.scope.get(USER_SCOPE_KEY)
    return checked if isinstance(checked, User) else await resolve_user(request)


CurrentUser = Annotated[User, Depends(current_user)]


class AuthenticateUploads:
    """Check the key of an upload before reading its body.

    FastAPI parses a form before it runs dependencies: without this, anyone could make the
    server receive and spool an upload of up to `max_upload_bytes`, only to answer 401.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in UPLOAD_ROUTES:
            try:
                scope[USER_SCOPE_KEY] = await resolve_user(HTTPConnection(scope))
            except NotAuthenticated as e:
                await error_response(e)(scope, receive, send)
                return
        await self.app(scope, receive, send)
