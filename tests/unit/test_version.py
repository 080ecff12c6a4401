"""The rule by which `ci` and a server judge each other's API versions."""

from __future__ import annotations

import pytest

from ci_common.version import API_VERSION, api_major, compatible, package_version, version_line


@pytest.mark.parametrize(
    ("server", "client", "expected"),
    [
        ("1.0", "1.0", True),
        ("1.7", "1.0", True),  # a newer minor only adds
        ("1.0", "1.7", True),
        ("2.0", "1.0", False),
        ("0.9", "1.0", False),
        ("10.0", "1.0", False),
        (" 1.2 ", "1.0", True),
    ],
)
def test_the_same_major_version_is_compatible(server: str, client: str, expected: bool) -> None:
    assert compatible(server, client) is expected


@pytest.mark.parametrize(
    "version", ["", "1", "v1.0", "1.x", "one.two", "1.0.0", "\u0661.\u0660", "1.0\n2"]
)
def test_a_version_that_cannot_be_read_is_not_compatible(version: str) -> None:
    assert api_major(version) is None
    assert not compatible(version)


def test_the_version_line_names_program_package_and_api() -> None:
    assert version_line("ci") == f"ci {package_version()} (API {API_VERSION})"
    assert compatible(API_VERSION)
