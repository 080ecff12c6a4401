"""Every answer says the server's package and API versions (ci_common/version.py), so that a
client learns them from whatever it asked, without a request of its own."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ci_common.version import API_VERSION, API_VERSION_HEADER, VERSION_HEADER, package_version


class VersionHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [
            (VERSION_HEADER.lower().encode(), package_version().encode()),
            (API_VERSION_HEADER.lower().encode(), API_VERSION.encode()),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_versions(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_versions)
