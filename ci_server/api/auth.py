"""Who is asking: a FastAPI dependency that turns the request's Bearer API key into its user.

Every route but /health depends on `current_user`. With CI_AUTH=off (allowed on loopback
only, see `ci_server.__main__`) every request is the built-in anonymous admin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ci_server.accounts import authenticate
from ci_server.users import ANONYMOUS_ADMIN, NotAuthenticated, User

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="API key",
    description="A key from `ci-admin key create`, sent as `Authorization: Bearer ci_...`.",
)


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if not request.app.state.settings.auth:
        return ANONYMOUS_ADMIN
    if credentials is None and "authorization" in request.headers:
        raise NotAuthenticated("the Authorization header must read `Bearer ci_...`")
    key = credentials.credentials if credentials is not None else None
    return await authenticate(request.app.state.store, key)


CurrentUser = Annotated[User, Depends(current_user)]
