"""The jobs page's rows: a page of a user's jobs, newest first, maybe of one status only,
maybe of one project only.

Paging is by key, as in the API: a page ends with the id to pass as `before` for the next.
The store filters by project itself; it lists jobs of every status, so a page of one status
reads store pages until it is full, reading at most SCAN_JOBS jobs: a rare status in a long
history gives a short (even empty) page that still links to the next one, never a request
that reads the whole history.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlencode

from ci_server.jobs import JobService, JobView
from ci_server.models import JobStatus
from ci_server.store.repository import AccountStore
from ci_server.users import User, UserNotFound

PAGE_SIZE = 50
SCAN_JOBS = 2000
"""Most jobs one filtered page reads."""
STORE_PAGE = 200


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What the jobs page shows: jobs of any status or one, of any project or one."""

    status: JobStatus | None = None
    project: str | None = None

    @property
    def active(self) -> bool:
        return self.status is not None or self.project is not None

    def query(self, **extra: str) -> str:
        """The filter (and `extra` parameters) as a URL's query, with its `?` ("" if none)."""
        params = {"status": self.status.value if self.status else None, "project": self.project}
        pairs = {key: value for key, value in {**params, **extra}.items() if value is not None}
        return f"?{urlencode(pairs)}" if pairs else ""


@dataclass(frozen=True, slots=True)
class JobsPage:
    views: list[JobView]
    next_before: str | None
    """The `before` of the next page, None on the last."""


async def jobs_page(
    service: JobService,
    user: User,
    *,
    only: JobFilter = JobFilter(),
    before: str | None = None,
    size: int | None = None,
) -> JobsPage:
    size = size or PAGE_SIZE
    status, project = only.status, only.project
    if status is None:
        views = await service.list(user, limit=size, before=before, project=project)
        return JobsPage(views, views[-1].job.id if len(views) == size else None)
    found: list[JobView] = []
    cursor = before
    for _ in range(0, SCAN_JOBS, STORE_PAGE):
        batch = await service.list(user, limit=STORE_PAGE, before=cursor, project=project)
        for view in batch:
            cursor = view.job.id
            if view.job.status is status:
                found.append(view)
                if len(found) == size:
                    return JobsPage(found, cursor)
        if len(batch) < STORE_PAGE:
            return JobsPage(found, None)
    return JobsPage(found, cursor)


async def owner_names(store: AccountStore, views: Iterable[JobView]) -> dict[str, str]:
    """The names of the jobs' owners, by user id (a deleted one's id stands for its name)."""
    names: dict[str, str] = {}
    for owner in {view.job.owner_id for view in views if view.job.owner_id is not None}:
        try:
            names[owner] = (await store.get_user(owner)).name
        except UserNotFound:
            names[owner] = owner
    return names
