"""A real browser (Debian's chromium, driven by Playwright) against a real `ci-server`.

Browsers cannot be downloaded here: Playwright launches the system's /usr/bin/chromium
(`.ci/run` installs it). Without it (or Playwright) the tests skip on a developer machine and
FAIL when CI is set, as Docker's do (tests/conftest.py). One browser and one server serve a
module's tests.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from tests.conftest import _unavailable
from tests.e2e.harness import FIXTURES, ServerProcess, server_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000
"""How long a page may take to show what a test waits for (jobs run in Docker)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is
    open, and pytest-asyncio's tests in later modules could not start theirs."""
    if not CHROMIUM.exists():
        _unavailable(f"no browser at {CHROMIUM}: apt-get install chromium", "browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install -e '.[dev]'", "browser")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def dashboard_server(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient, runner_image: str
) -> Iterator[ServerProcess]:
    env = server_env(
        tmp_path_factory.mktemp("dashboard"), runner_image, {"CI_MAX_CONCURRENT_JOBS": "1"}
    )
    server = ServerProcess(db_path=Path(env["CI_DB_PATH"]), env=env).start()
    yield server
    server.stop()


@dataclass(frozen=True)
class Person:
    name: str
    key: str


def zipped(project: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted((FIXTURES / project).rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(FIXTURES / project).as_posix())
    return buffer.getvalue()


def submit(server: ServerProcess, person: Person, project: str) -> str:
    """Submit a fixture project through the API, as `person`; the job's id."""
    response = requests.post(
        f"{server.url}/jobs",
        headers={"Authorization": f"Bearer {person.key}"},
        files={"archive": ("project.zip", zipped(project), "application/zip")},
        timeout=30,
    )
    response.raise_for_status()
    return response.json()["job_id"]


LAPTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def sign_in(
    browser: Any, server: ServerProcess, person: Person, viewport: dict[str, int] = LAPTOP
) -> Any:
    """A new browser context (its own cookies, a screen of `viewport`'s size) signed in as
    `person`; its page."""
    context = browser.new_context(base_url=server.url, viewport=viewport)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    assert "/sign-in" in page.url
    page.get_by_label("API key").fill(person.key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/")
    return page


def tab_to(page: Any, target: Any, *, backwards: bool = False, most: int = 60) -> None:
    """Press Tab (Shift+Tab) until `target` (a locator) has the keyboard's focus."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(most):
        page.keyboard.press(key)
        if target.evaluate("element => element === document.activeElement"):
            return
    raise AssertionError(f"{most} presses of {key} never reached {target}")


OUT_OF_SCREEN = """(selectors) => {
  const wrong = [];
  if (document.scrollingElement.scrollWidth > innerWidth)
    wrong.push(`the page is ${document.scrollingElement.scrollWidth}px wide`);
  for (const element of document.querySelectorAll(selectors)) {
    const box = element.getBoundingClientRect();
    const size = parseFloat(getComputedStyle(element).fontSize);
    if (box.left < 0 || box.right > innerWidth + 0.5 || size < 12)
      wrong.push(`${element.outerHTML.slice(0, 80)}: ${box.left}-${box.right}px, ${size}px`);
  }
  return wrong;
}"""


def out_of_screen(page: Any, selectors: str) -> list[str]:
    """What would make a reader scroll sideways: the page wider than the window, an element
    of `selectors` out of it or in a font smaller than 12px. Empty when all is readable."""
    return page.evaluate(OUT_OF_SCREEN, selectors)
