"""Fixtures shared by the integration tests that act as several people."""

from __future__ import annotations

import pytest

from ci_server.settings import Settings
from tests.integration.test_auth_api import People, add_person


@pytest.fixture
async def people(settings: Settings) -> People:
    """Ann and Bob, two users, and Root, an admin, in the database of the module's `settings`."""
    return People(
        ann=await add_person(settings, "ann"),
        bob=await add_person(settings, "bob"),
        root=await add_person(settings, "root", admin=True),
    )
