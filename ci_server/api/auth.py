"""Who is asking: the request's Bearer API key resolved to its user.

Every route but /health depends on `current_user`. With CI_AUTH=off (allowed on loopback
only, see `ci_server.__main__`) every request is the built-in anonymous admin.
`AuthenticateUploads` runs the same check for uploads before their body is read;
`while_authenticated` runs it again and again for as long as an event stream is open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sse_starlette import ServerSentEvent
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from ci_server.accounts import RECHECK_SECONDS, authenticate
from ci_server.api.errors import error_response
from ci_server.users import ANONYMOUS_ADMIN, NotAuthenticated, User

USER_SCOPE_KEY = "ci.user"
"""Where AuthenticateUploads leaves the user it found, for `current_user` to reuse."""
UPLOAD_ROUTES = frozenset(
    {("POST", "/jobs"), ("POST", "/uploads/missing"), ("POST", "/uploads/blobs")}
)
UNAUTHORIZED_EVENT = "unauthorized"
"""The last event of a stream whose key stopped working; `data` is a 401's JSON body."""
FRAMES_AHEAD = 2
"""Frames a stream takes from its job's events before the client has been sent them."""
_CHECK, _END = object(), object()
"""What `while_authenticated`'s queue holds besides frames: a check to make, the end."""
UNAUTHORIZED_EVENT_SCHEMA: dict[str, Any] = {
    "description": "the last event of a stream whose API key was revoked or whose user was "
    "deactivated meanwhile",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"const": UNAUTHORIZED_EVENT},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "type": "object",
                "required": ["status", "detail"],
                "properties": {"status": {"const": 401}, "detail": {"type": "string"}},
            },
        },
    },
}

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


async def while_authenticated(
    connection: HTTPConnection,
    frames: AsyncGenerator[bytes, None],
    *,
    every: float = RECHECK_SECONDS,
    check: Callable[[HTTPConnection], Awaitable[object]] = resolve_user,
) -> AsyncIterator[bytes]:
    """The `frames` of a stream for as long as its key works, checked every `every`
    seconds whether frames flood in or the stream idles; then an `unauthorized` event.
    `check` says who the connection is, raising NotAuthenticated (the dashboard's checks
    its session cookie).

    A key is checked when a request comes in; a stream may stay open for hours after.
    `ci-admin` revokes keys from another process, so the store is asked again (two reads
    by primary key). A task takes the frames, a ticker asks for checks, both through one
    queue: waiting for a frame must not hold a check back, and cancelling that wait would
    end the generator. (A task per frame cost 20 us a frame, this 3 to 5 us.)
    """
    if not connection.app.state.settings.auth:
        async for frame in frames:
            yield frame
        return
    inbox: asyncio.Queue[bytes | object] = asyncio.Queue()
    room = asyncio.Semaphore(FRAMES_AHEAD)  # frames are taken no faster than they are sent
    checked = asyncio.Event()

    async def forward() -> None:
        try:
            async for frame in frames:
                await room.acquire()
                inbox.put_nowait(frame)
        finally:
            inbox.put_nowait(_END)

    async def tick() -> None:
        while True:
            await asyncio.sleep(every)
            inbox.put_nowait(_CHECK)
            await checked.wait()  # one check waits at a time, however slow the client
            checked.clear()

    forwarding = asyncio.create_task(forward())
    ticking = asyncio.create_task(tick())
    try:
        while (item := await inbox.get()) is not _END:
            if isinstance(item, bytes):
                room.release()
                yield item
                continue
            try:
                await check(connection)
            except NotAuthenticated as e:
                payload = json.dumps({"status": 401, "detail": str(e)})
                yield ServerSentEvent(payload, event=UNAUTHORIZED_EVENT).encode()
                return
            checked.set()
        await forwarding  # raises what ended the frames, if anything did
    finally:
        for task in (forwarding, ticking):
            task.cancel()
        await asyncio.gather(forwarding, ticking, return_exceptions=True)
        await frames.aclose()


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
