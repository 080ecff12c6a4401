"""The access log's line of an answer about a job carries the job's id (CI_LOG_FORMAT=json):
uvicorn logs that line as the answer starts, inside the app's `send`, so the id is put in
the logging context (log_format.about_job) around that call, once routing has found it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ci_server.log_format import about_job


class JobIdInAccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_about_job(message: Message) -> None:
            job_id = scope.get("path_params", {}).get("job_id")
            if message["type"] != "http.response.start" or not isinstance(job_id, str):
                await send(message)
                return
            with about_job(job_id):
                await send(message)

        await self.app(scope, receive, send_about_job)
