"""The server's console scripts (`ci-server`, `ci-worker`, `ci-admin`), which a plain
`pip install` (the `ci` client's) installs too, without the server's dependencies: then
they say which extra to install instead of failing with a traceback."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

EXIT_NOT_INSTALLED = 1


def _run(program: str, module: str) -> int | None:
    try:
        main: Callable[[], int | None] = importlib.import_module(module).main
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] in ("ci_server", "ci_client", "ci_common"):
            raise
        print(
            f"{program}: error: the server's dependencies are not installed (no module "
            f"{e.name!r}): install the package with its server extra, "
            "pip install 'selfhosted-ci[server]' (from a checkout: pip install '.[server]')",
            file=sys.stderr,
        )
        return EXIT_NOT_INSTALLED
    return main()


def server() -> int | None:
    return _run("ci-server", "ci_server.__main__")


def worker() -> int | None:
    return _run("ci-worker", "ci_server.worker.__main__")


def admin() -> int | None:
    return _run("ci-admin", "ci_server.admin")
