"""The package's version, and the API version by which `ci` and a server judge each other.

The package version (setup.py, read from the installed metadata) is what `--version`
prints. The API version is MAJOR.MINOR of the HTTP API the server speaks: a minor step
only adds (a field, a route, an optional parameter), a major step changes or removes
something a client relies on. A client works with any server of the same major API
version; with another, `ci` says so and stops (exit status 2) rather than misread answers.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "selfhosted-ci"
API_VERSION = "1.0"
VERSION_HEADER = "X-CI-Version"
"""The server's package version, on every answer."""
API_VERSION_HEADER = "X-CI-API-Version"
"""The server's API version, on every answer."""


def package_version() -> str:
    """The installed package's version; `unknown` when run from a checkout never installed."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def version_line(program: str) -> str:
    """What `PROGRAM --version` prints: `ci 0.1.0 (API 1.0)`."""
    return f"{program} {package_version()} (API {API_VERSION})"


def api_major(version: str) -> int | None:
    """The major part of an API version (`1` of `1.3`); None if it is not MAJOR.MINOR."""
    match = re.fullmatch(r"([0-9]{1,6})\.[0-9]{1,6}", version.strip())
    return int(match[1]) if match else None


def compatible(server_api_version: str, client_api_version: str = API_VERSION) -> bool:
    """Whether a client of `client_api_version` can use a server of `server_api_version`:
    the same major version. A version that cannot be read is not compatible."""
    server = api_major(server_api_version)
    return server is not None and server == api_major(client_api_version)
