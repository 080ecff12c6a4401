"""The dashboard in a real browser, against a real `ci-server` running real Docker jobs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PHONE, Person, out_of_screen, sign_in, submit, tab_to
from tests.e2e.harness import ServerProcess

pytestmark = pytest.mark.docker

STATUS_LOG = """
window.statusesSeen = {};
new MutationObserver((mutations) => {
  for (const mutation of mutations)
    for (const node of mutation.addedNodes)
      if (node.id && node.id.startsWith("job-")) {
        const seen = (window.statusesSeen[node.id.slice(4)] ||= []);
        if (seen[seen.length - 1] !== node.dataset.status) seen.push(node.dataset.status);
      }
}).observe(document.querySelector("#jobs tbody"), { childList: true });
"""


def person(server: ServerProcess, name: str) -> Person:
    return Person(name, server.add_user(name))


@pytest.fixture(scope="module")
def ann(dashboard_server: ServerProcess) -> Person:
    return person(dashboard_server, "ann")


@pytest.fixture(scope="module")
def demo_job(dashboard_server: ServerProcess, ann: Person) -> Callable[[], str]:
    """Ann's dashboard_demo job: submitted when a test first asks (that test watches it
    run), then the same job for the module's later tests."""
    submitted: list[str] = []

    def job() -> str:
        if not submitted:
            submitted.append(submit(dashboard_server, ann, "dashboard_demo"))
        return submitted[0]

    return job


def test_jobs_appear_and_change_live_and_cancel_needs_the_page(
    browser: Any, dashboard_server: ServerProcess, ann: Person
) -> None:
    jobs = sign_in(browser, dashboard_server, ann)
    jobs.evaluate(STATUS_LOG)
    hanging = submit(dashboard_server, ann, "hanging")
    expect(jobs.locator(f"#job-{hanging} .status")).to_have_text("running")
    # The server runs one job at a time: the next one waits, and the page says so.
    waiting = submit(dashboard_server, ann, "dashboard_demo")
    expect(jobs.locator(f"#job-{waiting} .status")).to_have_text("queued")
    expect(jobs.locator(f"#job-{waiting}")).to_contain_text("#1 in queue")

    # A cancel that does not come from the page (no CSRF token) is refused.
    forged = jobs.request.post(f"/job/{hanging}/cancel", form={"x": "1"}, max_redirects=0)
    assert forged.status == 403
    assert dashboard_server.job(hanging)["status"] == "running"

    job_page = jobs.context.new_page()
    job_page.goto(f"/job/{hanging}")
    expect(job_page.locator("#log-lines")).to_contain_text("hanging test started")
    # By keyboard: Tab reaches "Follow the end" (Space toggles it) and Cancel (Enter).
    follow = job_page.get_by_label("Follow the end")
    tab_to(job_page, follow)
    job_page.keyboard.press("Space")
    expect(follow).not_to_be_checked()
    job_page.keyboard.press("Space")
    expect(follow).to_be_checked()
    tab_to(job_page, job_page.get_by_role("button", name="Cancel job"), backwards=True)
    job_page.keyboard.press("Enter")
    expect(job_page.locator("#details .status")).to_have_text("cancelled")
    expect(job_page.get_by_role("button", name="Cancel job")).to_have_count(0)
    assert dashboard_server.job(hanging)["status"] == "cancelled"

    expect(jobs.locator(f"#job-{hanging} .status")).to_have_text("cancelled")
    expect(jobs.locator(f"#job-{waiting} .status")).to_have_text("failed", timeout=120_000)
    expect(jobs.locator(f"#job-{waiting}")).to_contain_text("1 passed, 1 failed")
    seen = jobs.evaluate("window.statusesSeen")  # the same page all along: no reload
    assert seen[waiting] == ["queued", "running", "failed"]
    assert seen[hanging][-1] == "cancelled"


def test_a_running_jobs_log_arrives_live_in_order_and_its_failure_is_shown(
    browser: Any, dashboard_server: ServerProcess, ann: Person, demo_job: Callable[[], str]
) -> None:
    page = sign_in(browser, dashboard_server, ann)
    job_id = demo_job()
    page.goto(f"/job/{job_id}")
    lines = page.locator("#log-lines")
    expect(lines).to_contain_text("counting 05", timeout=120_000)
    # Live: the page has early lines while the job still runs and prints the others.
    assert "counting 30" not in lines.inner_text()
    assert dashboard_server.job(job_id)["status"] == "running"
    expect(page.locator("#details .status")).to_have_text("failed", timeout=120_000)
    counted = re.findall(r"counting (\d\d)", lines.inner_text())
    assert counted == [f"{n:02d}" for n in range(1, 31)]
    # Job output is text, whatever it holds; pytest's colours are shown as colours.
    expect(lines).to_contain_text("<script>document.title = 'pwned'</script><b>not bold</b>")
    assert page.title() != "pwned"
    assert lines.locator("b").count() == 0
    assert lines.locator("span[class*='ansi-fg-']").count() > 0
    # The failure opens with its message and traceback.
    failure = page.locator("details.failure")
    expect(failure).to_contain_text("test_fails_with_a_message")
    expect(failure.locator(".message")).to_contain_text("the answer should be 42 but was 41")
    expect(failure.locator(".traceback")).to_contain_text("assert answer == 42")
    expect(page.locator("#details")).to_contain_text("1 passed, 1 failed")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the raw log").click()
    assert "counting 30" in download.value.path().read_text()
    # Its artifacts (the JUnit report) download through the session, as files.
    with page.expect_download() as report:
        page.get_by_role("link", name="junit.xml").click()
    assert report.value.suggested_filename == "junit.xml"
    assert "test_fails_with_a_message" in report.value.path().read_text()


def test_at_phone_width_nothing_is_out_of_screen_and_the_keyboard_opens_a_job(
    browser: Any, dashboard_server: ServerProcess, ann: Person, demo_job: Callable[[], str]
) -> None:
    job_id = demo_job()
    page = sign_in(browser, dashboard_server, ann, viewport=PHONE)
    link = page.locator(f"#job-{job_id} a")
    expect(link).to_be_visible()
    assert out_of_screen(page, "h1, .filter > *, #jobs td, #jobs td > *, .pager a") == []
    tab_to(page, link)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/job/{job_id}")
    expect(page.locator("#details .status")).to_have_text("failed", timeout=120_000)
    lines = page.locator("#log-lines")
    expect(lines).to_contain_text("wide:" + "=" * 300)
    expect(page.locator("details.failure .traceback")).to_be_visible()
    parts = (
        "h1, .details dt, .details dd, .actions > *, .log-bar > :not([hidden]), #log-lines,"
        " details.failure, .traceback, #tests td"
    )
    assert out_of_screen(page, parts) == []
    assert lines.evaluate("box => box.scrollWidth <= box.clientWidth + 1")  # wide lines wrap


def test_another_users_job_is_a_404_like_an_unknown_one(
    browser: Any, dashboard_server: ServerProcess, ann: Person
) -> None:
    job_id = submit(dashboard_server, ann, "passing")
    bob = person(dashboard_server, "bob")
    page = sign_in(browser, dashboard_server, bob)
    expect(page.locator("#jobs tbody tr")).to_have_count(0)
    theirs = page.goto(f"/job/{job_id}")
    assert theirs is not None and theirs.status == 404
    theirs_text = page.locator("main").inner_text()
    unknown = page.goto("/job/0123456789ab")
    assert unknown is not None and unknown.status == 404
    assert theirs_text.replace(job_id, "0123456789ab") == page.locator("main").inner_text()
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/sign-in$"))
    assert page.goto("/") is not None and "/sign-in" in page.url
