"""`ci-server`: run the API with uvicorn, and a worker in the same process unless
`--no-worker` (then `ci-worker` processes run the jobs)."""

from __future__ import annotations

import argparse
import ipaddress
import logging

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ci_common.version import version_line
from ci_server.app import create_app
from ci_server.heap import freeze_startup_objects
from ci_server.log_format import configure_logging
from ci_server.settings import InvalidSettings, load_settings

logger = logging.getLogger("ci_server")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="ci-server",
        description="Serve the CI API; settings come from CI_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=version_line("ci-server"))
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        help="serve the API only; `ci-worker` processes sharing the database run the jobs",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except InvalidSettings as e:
        parser.error(str(e))
    configure_logging(args.log_level, settings.log_format)
    if not settings.auth:
        if not is_loopback(args.host):
            parser.error(
                f"CI_AUTH=off lets anyone who can connect act as an admin, so it is allowed "
                f"only on a loopback address (127.0.0.1, ::1, localhost), not --host "
                f"{args.host}. Keep authentication on and create keys with `ci-admin`."
            )
        logger.warning("authentication is off (CI_AUTH=off): every request acts as an admin")
    if args.worker:
        logger.info("serving the API and running jobs as worker %s", settings.worker_name)
    else:
        logger.info("serving the API only (--no-worker): ci-worker processes run the jobs")
    app = create_app(settings, worker=args.worker)
    freeze_startup_objects()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        # JSON: uvicorn's own loggers go through the root's handler too, as JSON lines.
        log_config=None if settings.log_format == "json" else LOGGING_CONFIG,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
