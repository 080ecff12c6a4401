"""Talking to the CI server: HTTP with requests, live events over SSE (sse.py) with reconnection."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import requests

from ci_client.downloads import write_checked
from ci_client.sse import sse_events
from ci_common.trees import BATCH_MEDIA_TYPE
from ci_common.version import (
    API_VERSION,
    API_VERSION_HEADER,
    VERSION_HEADER,
    compatible,
    package_version,
)

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 60.0
"""Longer than the server's keep-alive interval (15 s): silence past it means a dead link."""
RECONNECT_FOR_SECONDS = 60.0
GROUP_PREFIX = "g-"
"""How a group's id starts (a job's is 12 hex digits)."""
DOWNLOAD_CHUNK = 256 * 1024
TESTS_PAGE_SIZE = 500
"""Test results asked per request (the server answers at most 1000)."""


class ClientError(Exception):
    """A problem the user must fix (server down, wrong URL, unknown job...): exit code 2."""


class JobNotFound(ClientError):
    pass


class ServerWithoutContents(ClientError):
    """The server takes no content uploads (an older one): send a zip instead."""


class ContentsMissing(ClientError):
    """The server cleaned up contents between the question and the submit: send again."""


class NotAuthenticated(ClientError):
    """The server wants a (valid) API key: HTTP 401, with the server's reason."""


class IncompatibleServer(ClientError):
    """The server speaks another major API version than this `ci` (ci_common/version.py)."""


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    type: str
    data: dict[str, Any]


class CIClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        self._server_checked = False

    def _check_server(self, response: requests.Response) -> None:
        """Refuse a server of another major API version, judged by the header of its first
        answer (a server from before API versions sends none, and passes)."""
        self._server_checked = True
        server_api = response.headers.get(API_VERSION_HEADER)
        if server_api is None or compatible(server_api):
            return
        server_version = response.headers.get(VERSION_HEADER, "unknown")
        raise IncompatibleServer(
            f"the CI server at {self.base_url} speaks API {server_api} (ci-server "
            f"{server_version}), and this ci {package_version()} speaks API {API_VERSION}: "
            f"install the ci of the server's version, {server_version}"
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base_url}{path}"
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
        try:
            response = self.session.request(method, url, **kwargs)
        except requests.exceptions.ConnectionError as e:
            raise ClientError(
                f"cannot reach the CI server at {self.base_url}: is `ci-server` running? "
                "(set the address with --server or CI_SERVER_URL)"
            ) from e
        except requests.exceptions.Timeout as e:
            raise ClientError(f"the CI server at {self.base_url} did not answer in time") from e
        except requests.exceptions.RequestException as e:
            raise ClientError(f"cannot talk to {self.base_url}: {e}") from e
        if not self._server_checked:
            try:
                self._check_server(response)
            except IncompatibleServer:
                response.close()
                raise
        return response

    def _json(self, response: requests.Response, job_id: str | None = None) -> Any:
        if response.status_code == 401:
            raise NotAuthenticated(_detail(response) or "authentication required")
        if job_id is not None and response.status_code in (404, 422) and _is_api_error(response):
            kind = "group" if job_id.startswith(GROUP_PREFIX) else "job"
            raise JobNotFound(f"no {kind} with id {job_id!r} on {self.base_url}")
        if response.status_code >= 400:
            detail = _detail(response)
            if response.status_code == 404 or detail is None:
                raise ClientError(
                    f"{self.base_url} does not look like a CI server "
                    f"({response.request.method} {response.url} answered "
                    f"{response.status_code})"
                )
            raise ClientError(f"the server refused: {detail} (HTTP {response.status_code})")
        try:
            return response.json()
        except ValueError as e:
            raise ClientError(f"{self.base_url} does not look like a CI server") from e

    def submit(self, archive: Path, **options: Any) -> dict[str, Any]:
        """Upload the project as a zip (`_submit` for the options)."""
        with archive.open("rb") as stream:
            return self._json(
                self._submit([("archive", ("project.zip", stream, "application/zip"))], **options)
            )

    def _submit(
        self,
        fields: list[tuple[str, Any]],
        *,
        timeout_seconds: float | None = None,
        pytest_args: Sequence[str] = (),
        no_cache: bool = False,
        project: str | None = None,
        directory: str | None = None,
        python: Sequence[str] = (),
        shards: int | None = None,
    ) -> requests.Response:
        """POST /jobs with the project's `fields`; the server names it `project`, else from
        its files, else `directory` (the folder's name). It answers a job, or a group of
        jobs (with `jobs`) when the `python` versions and `shards` make several."""
        fields = list(fields)
        if timeout_seconds is not None:
            fields.append(("timeout_seconds", str(timeout_seconds)))
        fields.extend(("pytest_args", arg) for arg in pytest_args)
        if no_cache:
            fields.append(("no_cache", "true"))
        if project is not None:
            fields.append(("project", project))
        if directory is not None:
            fields.append(("directory", directory))
        fields.extend(("python", version) for version in python)
        if shards is not None:
            fields.append(("shards", str(shards)))
        # The encoder streams a file: a large project is never held whole in memory.
        from requests_toolbelt.multipart.encoder import MultipartEncoder

        body = MultipartEncoder(fields=fields)
        return self._request(
            "POST", "/jobs", data=body, headers={"Content-Type": body.content_type}
        )

    def missing_contents(self, hashes: Sequence[str]) -> tuple[list[str], int]:
        """Those of `hashes` the server lacks for this user, and the bytes the question
        took; ServerWithoutContents if the server predates content uploads."""
        body = json.dumps({"hashes": list(hashes)}).encode()
        response = self._request(
            "POST", "/uploads/missing", data=body, headers={"Content-Type": "application/json"}
        )
        if response.status_code in (404, 405):
            raise ServerWithoutContents(f"{self.base_url} takes zip uploads only")
        return self._json(response)["missing"], len(body)

    def upload_contents(self, batch: BinaryIO) -> int:
        """Send a batch of contents (contents.py); the bytes sent."""
        size = os.fstat(batch.fileno()).st_size
        response = self._request(
            "POST", "/uploads/blobs", data=batch, headers={"Content-Type": BATCH_MEDIA_TYPE}
        )
        self._json(response)
        return size

    def submit_tree(self, tree: str, **options: Any) -> dict[str, Any]:
        """Submit the project whose contents were sent, by its root tree's hash;
        ContentsMissing if the server no longer has some of them."""
        response = self._submit([("tree", tree)], **options)
        if response.status_code == 409:
            raise ContentsMissing(_detail(response) or "contents missing")
        return self._json(response)

    def copy(self) -> CIClient:
        """A client of the same server with the same key and a session of its own: one
        per thread (a requests.Session is not to be shared between threads)."""
        twin = CIClient(self.base_url)
        twin.session.headers.update(self.session.headers)
        return twin

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/jobs/{job_id}"), job_id)

    def get_group(self, group_id: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/groups/{group_id}"), group_id)

    def cancel_group(self, group_id: str) -> tuple[dict[str, Any], bool]:
        """Cancel the group's jobs; say whether this call changed it (False: all had ended)."""
        response = self._request("POST", f"/groups/{group_id}/cancel")
        if response.status_code == 409:
            return self.get_group(group_id), False
        return self._json(response, group_id), True

    def test_results(
        self, job_id: str, *, outcomes: Sequence[str] = (), page_size: int = TESTS_PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """The job's per-test results in the order they ran (only `outcomes`, if given),
        fetched a page at a time as they are consumed."""
        params: dict[str, Any] = {"limit": page_size, "outcome": list(outcomes)}
        while True:
            page = self._json(self._request("GET", f"/jobs/{job_id}/tests", params=params), job_id)
            yield from page
            if len(page) < page_size or "position" not in page[-1]:
                return
            params["after"] = page[-1]["position"]

    def list_jobs(
        self, *, limit: int = 50, project: str | None = None, grouped: bool = False
    ) -> list[dict[str, Any]]:
        """Newest first; `grouped`: a group of jobs as one item, with its `jobs`."""
        params: dict[str, Any] = {"limit": limit}
        if grouped:
            params["grouped"] = "true"
        if project is not None:
            params["project"] = project
        return self._json(self._request("GET", "/jobs", params=params))

    def test_history(self, project: str, *, runs: int | None = None) -> list[dict[str, Any]]:
        """Each test of the user's project with its latest runs, newest first."""
        params: dict[str, Any] = {"project": project}
        if runs is not None:
            params["runs"] = runs
        return self._json(self._request("GET", "/tests", params=params))

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """The job's artifacts: path, size, sha256."""
        return self._json(self._request("GET", f"/jobs/{job_id}/artifacts"), job_id)

    def download_artifact(self, job_id: str, listed: dict[str, Any], target: Path) -> None:
        """Stream the artifact `listed` (as `artifacts` gives it) into the file `target`,
        checked against its size and digest (UnsafeArtifact if they differ)."""
        path = str(listed["path"])
        response = self._request("GET", f"/jobs/{job_id}/artifacts/{quote(path)}", stream=True)
        with response:
            if response.status_code == 404 and _is_api_error(response):
                raise ClientError(_detail(response) or f"no artifact {path!r}")
            if response.status_code != 200:
                self._json(response, job_id)  # raises the server's reason
                raise ClientError(f"the server sent no artifact {path!r}")
            chunks = response.iter_content(DOWNLOAD_CHUNK)
            write_checked(target, chunks, int(listed["size"]), str(listed["sha256"]))

    def cancel(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """Cancel the job; say whether this call changed it (False: it had already finished)."""
        response = self._request("POST", f"/jobs/{job_id}/cancel")
        if response.status_code == 409:
            return self.get_job(job_id), False
        return self._json(response, job_id), True

    def events(
        self, job_id: str, *, after: int | None = None, tail: int | None = None
    ) -> Iterator[Event]:
        """The job's events until its `end` event, resuming by itself when the link drops."""
        last_seq = after
        deadline: float | None = None
        while True:
            params: dict[str, int] = {}
            headers = {"Accept": "text/event-stream"}
            if last_seq is not None:
                headers["Last-Event-ID"] = str(last_seq)
            elif tail is not None:
                params["tail"] = tail
            try:
                response = self._request(
                    "GET", f"/jobs/{job_id}/events", params=params, headers=headers, stream=True
                )
            except ClientError:
                if deadline is None or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
                continue
            if response.status_code != 200:
                self._json(response, job_id)
            try:
                for kind, data in sse_events(response.iter_content(chunk_size=None)):
                    if not data:
                        continue
                    if kind == "unauthorized":  # the key stopped working meanwhile
                        raise NotAuthenticated(json.loads(data)["detail"])
                    payload = json.loads(data)
                    event = Event(payload.pop("seq"), payload.pop("type"), payload)
                    last_seq = event.seq
                    deadline = None
                    yield event
                    if event.type == "end":
                        return
            except (requests.exceptions.RequestException, ConnectionError):
                pass
            finally:
                response.close()
            # The stream ended without an `end` event: the link dropped. Resume after last_seq.
            if last_seq is None:
                last_seq = 0
            if deadline is None:
                deadline = time.monotonic() + RECONNECT_FOR_SECONDS
            elif time.monotonic() > deadline:
                raise ClientError(f"lost the connection to {self.base_url} and could not resume")
            time.sleep(0.2)


def _detail(response: requests.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        return detail if isinstance(detail, str) else json.dumps(detail)
    return None


def _is_api_error(response: requests.Response) -> bool:
    """Tell our API's answer for an unknown or malformed job id from a URL that is no CI
    server at all."""
    detail = _detail(response)
    return detail is not None and (
        detail.startswith(("no job", "no group")) or '"job_id"' in detail or '"group_id"' in detail
    )
