"""The dashboard over HTTP (httpx + ASGI, a real SQLite file, the FakeExecutor): sessions,
CSRF, who sees which job, the log's pages and download, a job's artifacts, static files.
What a browser does with the pages is tests/browser's."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from ci_server import accounts
from ci_server.settings import Settings
from ci_server.store.sqlite import SqliteStore
from ci_server.users import Session
from tests.fakes import FakeExecutor, FakeRun
from tests.integration.test_artifacts_api import REPORT
from tests.integration.test_auth_api import People, Person
from tests.integration.test_sqlite_api import (
    PASSING_PROJECT,
    UNKNOWN_ID,
    finished,
    make_settings,
    serve,
    submit,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, auth=True)


LINES = [f"line {n} \x1b[31m<b>red</b>\x1b[0m\n".encode() for n in range(1, 3001)]


@pytest.fixture
async def client(settings: Settings, people: People) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(settings, FakeExecutor(FakeRun(output=LINES))) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, person: Person) -> httpx.Response:
    response = await client.post("/sign-in", data={"api_key": person.key, "after": "/"})
    assert response.status_code == 303, response.text
    return response


async def job_of(client: httpx.AsyncClient, person: Person, **form: str) -> str:
    """A finished job of `person`, submitted through the API with their key (and `form`'s
    fields)."""
    client.headers.update(person.headers)
    try:
        response = await submit(client, PASSING_PROJECT, **form)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        await finished(client, job_id)
    finally:
        del client.headers["Authorization"]
    return job_id


async def test_pages_without_a_session_send_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/job/{UNKNOWN_ID}")
    assert response.status_code == 303
    assert response.headers["location"] == f"/sign-in?after=%2Fjob%2F{UNKNOWN_ID}"
    for path in (f"/job/{UNKNOWN_ID}/events", f"/job/{UNKNOWN_ID}/log?before=5", "/live/jobs"):
        assert (await client.get(path)).status_code == 401
    assert "API key" in (await client.get("/sign-in")).text


async def test_sign_in_sets_a_session_cookie_and_sign_out_ends_it(
    client: httpx.AsyncClient, people: People
) -> None:
    response = await sign_in(client, people.ann)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP here; HTTPS gets Secure
    assert people.ann.key not in cookie
    page = await client.get("/")
    assert page.status_code == 200
    assert "ann" in page.text
    assert "Content-Security-Policy" in page.headers
    token = CSRF.search(page.text)
    assert token is not None
    kept = dict(client.cookies)
    out = await client.post("/sign-out", data={"csrf_token": token.group(1)})
    assert out.status_code == 303
    assert (await client.get("/")).status_code == 303
    # The old cookie, kept by someone, no longer works either.
    client.cookies.update(kept)
    assert (await client.get("/")).status_code == 303


async def test_a_wrong_key_is_refused_and_a_revoked_one_ends_the_session(
    client: httpx.AsyncClient, settings: Settings, people: People
) -> None:
    response = await client.post("/sign-in", data={"api_key": people.ann.key + "x"})
    assert response.status_code == 401
    assert "invalid API key" in response.text
    await sign_in(client, people.ann)
    assert (await client.get("/")).status_code == 200
    async with SqliteStore(settings.db_path) as store:
        await accounts.revoke_key(store, people.ann.key.split("_")[1])
    assert (await client.get("/")).status_code == 303


async def test_forged_cookies_are_refused(
    client: httpx.AsyncClient, settings: Settings, people: People
) -> None:
    await sign_in(client, people.ann)
    token = client.cookies["ci_session"]
    async with SqliteStore(settings.db_path) as store:
        [session] = await store_sessions(store)
    assert token not in repr(session)  # only its hash is stored
    for forged in (
        session.token_hash,  # what someone who reads the database could try
        session.csrf_token,
        token[:-1],
        people.ann.key,
        "garbage",
    ):
        client.cookies.clear()
        client.cookies.set("ci_session", forged)
        assert (await client.get("/")).status_code == 303, forged


async def store_sessions(store: SqliteStore) -> list[Session]:
    async with store.db.execute("SELECT token_hash FROM sessions") as cursor:
        hashes = [row["token_hash"] for row in await cursor.fetchall()]
    return [await store.get_session(token_hash) for token_hash in hashes]


async def test_a_session_works_on_every_replica_until_signed_out_on_one(
    settings: Settings, people: People
) -> None:
    """Two API processes on one database: a session made through one works through the
    other, and a sign-out through either ends it on both at once."""
    async with (
        serve(settings, None, worker=False) as first,
        serve(settings, None, worker=False) as second,
    ):
        await sign_in(first, people.ann)
        second.cookies.update(first.cookies)
        page = await second.get("/")
        assert page.status_code == 200
        token = CSRF.search(page.text)
        assert token is not None
        out = await first.post("/sign-out", data={"csrf_token": token.group(1)})
        assert out.status_code == 303
        assert (await second.get("/")).status_code == 303
        assert "ci_session" in second.cookies  # kept, and refused
        first.cookies.update(second.cookies)
        assert (await first.get("/")).status_code == 303


async def test_another_users_job_is_a_404_like_an_unknown_one(
    client: httpx.AsyncClient, people: People
) -> None:
    job_id = await job_of(client, people.bob)
    await sign_in(client, people.ann)
    theirs = await client.get(f"/job/{job_id}")
    unknown = await client.get(f"/job/{UNKNOWN_ID}")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.text.replace(job_id, UNKNOWN_ID) == unknown.text
    for path in ("/events", "/log?before=5", "/log.txt", "/details", "/tests"):
        assert (await client.get(f"/job/{job_id}{path}")).status_code == 404, path
    assert job_id not in (await client.get("/")).text
    client.cookies.clear()
    await sign_in(client, people.root)
    assert (await client.get(f"/job/{job_id}")).status_code == 200
    assert job_id in (await client.get("/")).text


async def test_pages_name_the_jobs_project(client: httpx.AsyncClient, people: People) -> None:
    client.headers.update(people.ann.headers)
    response = await submit(client, project="<b>shop</b>")
    del client.headers["Authorization"]
    job_id = response.json()["job_id"]
    unnamed = await job_of(client, people.ann)
    await sign_in(client, people.ann)
    jobs = (await client.get("/")).text
    assert f'<a href="/job/{job_id}">&lt;b&gt;shop&lt;/b&gt; <span class="job-id">{job_id}' in jobs
    assert f'<a href="/job/{unnamed}">Job <span class="job-id">{unnamed}' in jobs
    page = (await client.get(f"/job/{job_id}")).text
    assert "<title>&lt;b&gt;shop&lt;/b&gt; " in page
    assert '<dt>Project</dt><dd><a href="/?project=%3Cb%3Eshop%3C%2Fb%3E"' in page
    assert ">&lt;b&gt;shop&lt;/b&gt;</a></dd>" in page


async def test_a_group_s_jobs_show_their_label(client: httpx.AsyncClient, people: People) -> None:
    client.headers.update(people.ann.headers)
    group = (await submit(client, PASSING_PROJECT, shards="2")).json()
    del client.headers["Authorization"]
    await sign_in(client, people.ann)
    jobs = (await client.get("/")).text
    for job in group["jobs"]:
        assert (
            f'<span class="job-label" title="group {group["group_id"]}">{job["label"]}</span> '
            f'<span class="job-id">{job["job_id"]}'
        ) in jobs
    page = (await client.get(f"/job/{group['jobs'][1]['job_id']}")).text
    assert f"<dt>Group</dt><dd>{group['group_id']}</dd>" in page
    assert '<span class="job-label">2/2</span>' in page


async def test_cancel_needs_the_csrf_token(client: httpx.AsyncClient, people: People) -> None:
    await sign_in(client, people.ann)
    job_id = await job_of(client, people.ann)
    refused = await client.post(f"/job/{job_id}/cancel")
    assert refused.status_code == 403
    refused = await client.post(f"/job/{job_id}/cancel", data={"csrf_token": "x" * 64})
    assert refused.status_code == 403
    token = CSRF.search((await client.get(f"/job/{job_id}")).text)
    assert token is not None
    done = await client.post(f"/job/{job_id}/cancel", data={"csrf_token": token.group(1)})
    assert done.status_code == 303  # it had finished: the page says how


async def test_log_pages_and_download(client: httpx.AsyncClient, people: People) -> None:
    job_id = await job_of(client, people.ann)
    await sign_in(client, people.ann)
    page = await client.get(f"/job/{job_id}")
    assert "line 1 " not in page.text  # the log comes through the stream, not the page
    earlier = (await client.get(f"/job/{job_id}/log", params={"before": 1500})).json()
    seqs = [event["seq"] for event in earlier["events"]]
    assert seqs == list(range(1500 - len(seqs), 1500))
    assert len(seqs) == 1499
    assert earlier["more"] is False
    raw = await client.get(f"/job/{job_id}/log.txt")
    assert raw.headers["content-disposition"] == f'attachment; filename="job-{job_id}.log"'
    assert "line 3000 \x1b[31m<b>red</b>\x1b[0m\n" in raw.text
    assert raw.text.count("\n") >= 3000


async def test_static_files_are_cached_and_versioned(
    client: httpx.AsyncClient, people: People
) -> None:
    await sign_in(client, people.ann)
    page = (await client.get("/")).text
    css = re.search(r'href="(/static/dashboard\.css\?v=[0-9a-f]+)"', page)
    assert css is not None
    response = await client.get(css.group(1))
    assert response.status_code == 200
    assert "immutable" in response.headers["cache-control"]


PAGE_PREFIXES = ("/job/", "/sign-", "/live/", "/static")
"""Where the dashboard's routes are (ci_server/web/)."""


async def test_pages_are_not_in_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/jobs" in paths  # the API is there
    pages = [path for path in paths if path == "/" or path.startswith(PAGE_PREFIXES)]
    assert pages == []


async def test_jobs_filter_by_status_and_page_by_key(
    client: httpx.AsyncClient, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ci_server.web.listing.PAGE_SIZE", 2)
    ids = [await job_of(client, people.ann) for _ in range(3)]  # each succeeds
    await sign_in(client, people.ann)
    first = (await client.get("/", params={"status": "succeeded"})).text
    assert [i for i in reversed(ids) if i in first] == list(reversed(ids))[:2]
    older = re.search(r'href="/\?status=succeeded&amp;before=([0-9a-f]{12})"', first)
    assert older is not None
    second = await client.get("/", params={"status": "succeeded", "before": older.group(1)})
    assert ids[0] in second.text
    assert ids[2] not in second.text
    none = (await client.get("/", params={"status": "failed"})).text
    assert not any(i in none for i in ids)
    assert "No jobs failed here yet" in none


def shown(page: str, ids: list[str]) -> list[str]:
    """Which of the jobs `ids` the page lists, in its order."""
    return sorted((i for i in ids if f'id="job-{i}"' in page), key=page.index)


async def test_jobs_filter_by_project_with_status_and_pages(
    client: httpx.AsyncClient, people: People, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ci_server.web.listing.PAGE_SIZE", 2)
    shop = [await job_of(client, people.ann, project="shop & co") for _ in range(3)]
    other = await job_of(client, people.ann, project="other")
    theirs = await job_of(client, people.bob, project="shop & co")
    every = [*shop, other, theirs]
    await sign_in(client, people.ann)
    first = (await client.get("/", params={"project": "shop & co"})).text
    assert shown(first, every) == shop[:0:-1]  # newest first
    assert 'value="shop &amp; co"' in first  # the field keeps the filter
    assert 'data-live="/live/jobs?project=shop+%26+co"' in first
    older = re.search(r'href="/\?project=shop\+%26\+co&amp;before=([0-9a-f]{12})"', first)
    assert older is not None
    second = await client.get("/", params={"project": "shop & co", "before": older.group(1)})
    assert shown(second.text, every) == shop[:1]
    assert 'href="/?project=shop+%26+co">Newest' in second.text
    # With a status too: both filters hold, and the pages' links keep both.
    both = (await client.get("/", params={"status": "succeeded", "project": "shop & co"})).text
    assert shown(both, every) == shop[:0:-1]
    assert "/?status=succeeded&amp;project=shop+%26+co&amp;before=" in both
    failed = (await client.get("/", params={"status": "failed", "project": "shop & co"})).text
    assert "No jobs failed of project shop &amp; co here yet" in failed
    # An empty field (the form's "any") filters nothing; a job page links to its project's.
    response = await client.get("/", params={"status": "", "project": " "})
    everything = response.text
    assert shown(everything, every) == [other, shop[2]]
    page = (await client.get(f"/job/{other}")).text
    assert '<dt>Project</dt><dd><a href="/?project=other"' in page


async def test_the_job_page_lists_its_artifacts_and_they_download_as_attachments(
    settings: Settings, people: People
) -> None:
    async with serve(settings, FakeExecutor(FakeRun(report=REPORT))) as client:
        job_id = await job_of(client, people.ann)
        download = f"/job/{job_id}/artifacts/junit.xml"
        without_session = await client.get(download)
        await sign_in(client, people.ann)
        page = await client.get(f"/job/{job_id}")
        details = await client.get(f"/job/{job_id}/details")
        file = await client.get(download)
        unlisted = await client.get(f"/job/{job_id}/artifacts/htmlcov/index.html")
        client.cookies.clear()
        await sign_in(client, people.bob)
        theirs = await client.get(download)
        unknown = await client.get(f"/job/{UNKNOWN_ID}/artifacts/junit.xml")

    link = f'<a href="{download}" download>junit.xml</a> <span class="size">{len(REPORT)} B</span>'
    assert page.status_code == 200 and link in page.text and link in details.text
    assert page.headers["content-security-policy"].startswith("default-src 'self';")
    assert without_session.status_code == 401
    assert (file.status_code, file.content) == (200, REPORT.encode())
    assert file.headers["content-type"] == "application/octet-stream"
    assert file.headers["content-disposition"] == "attachment; filename*=UTF-8''junit.xml"
    assert file.headers["x-content-type-options"] == "nosniff"
    assert unlisted.status_code == 404
    assert (theirs.status_code, unknown.status_code) == (404, 404)
    assert theirs.json() == {"detail": f"no job with id {job_id!r}"}
    assert unknown.json() == {"detail": f"no job with id {UNKNOWN_ID!r}"}
