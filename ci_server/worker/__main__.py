"""`ci-worker`: claim queued jobs from the CI's database and run them on this host's Docker
engine, until SIGTERM or SIGINT (then the running jobs get CI_WORKER_GRACE to finish).

Settings come from CI_* environment variables, as for `ci-server`: the database
(CI_DATABASE_URL, or CI_DB_PATH on this host), CI_DOCKER_HOST, CI_MAX_CONCURRENT_JOBS,
CI_WORKER_TIMEOUT, CI_WORKER_GRACE, the container limits. `--metrics-port` serves this
process's metrics (jobs run, builds, warm containers, events) for Prometheus. Exit codes:
0 stopped on request, 1 the database, the Docker engine or the metrics port cannot be used,
2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sqlite3
import sys
from collections.abc import Sequence

import asyncpg

from ci_common.version import version_line
from ci_server.app import docker_executor
from ci_server.events import EventHub
from ci_server.heap import freeze_startup_objects
from ci_server.log_format import configure_logging
from ci_server.metrics import Metrics
from ci_server.retention import Pruner
from ci_server.runner.executor import Executor
from ci_server.settings import InvalidSettings, Settings, load_settings
from ci_server.store.factory import configured_database, describe, open_blob_store, open_store
from ci_server.worker.loop import Worker
from ci_server.worker.recovery import Sweeper

logger = logging.getLogger("ci_server.worker")

EXIT_STOPPED = 0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2


async def run_worker(
    settings: Settings,
    *,
    executor: Executor | None = None,
    stop: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> None:
    """Run a worker until `stop` is set (default: SIGTERM or SIGINT), then stop it; it
    counts in `metrics`."""
    metrics = metrics or Metrics()
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
    name = settings.worker_name
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_store(settings))
        hub = await stack.enter_async_context(
            EventHub(store, flush_interval=settings.event_flush_seconds, metrics=metrics)
        )
        job_executor = await stack.enter_async_context(
            executor or docker_executor(settings, metrics)
        )
        blobs = await stack.enter_async_context(open_blob_store(settings))
        worker = Worker(
            store,
            hub,
            job_executor,
            blobs,
            settings,
            interrupted_reason=f"worker {name} restarted",
        )
        await stack.enter_async_context(worker)
        await stack.enter_async_context(Sweeper(store, hub, blobs, settings, local_worker=name))
        await stack.enter_async_context(Pruner(store, blobs, settings, job_executor))
        logger.info(
            "worker %s: running up to %d job(s) at once, Docker at %s, database %s",
            name,
            settings.max_concurrent_jobs,
            settings.docker_host or "DOCKER_HOST (default)",
            describe(configured_database(settings)),
        )
        await stop.wait()
        logger.info(
            "worker %s: stopping; %d running job(s) get %gs to finish (CI_WORKER_GRACE)",
            name,
            len(worker.running),
            settings.worker_grace,
        )
    logger.info("worker %s: stopped", name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ci-worker",
        description="Claim queued jobs from the CI's database and run them on this host's "
        "Docker engine. Settings come from CI_* environment variables.",
        epilog="Exit codes: 0 stopped on request, 1 database or Docker unusable, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=version_line("ci-worker"))
    parser.add_argument(
        "--name",
        help="this worker's name, unique among the workers of the database "
        "(default: $CI_WORKER_NAME, else the host name)",
    )
    parser.add_argument("--log-level", default="info", help="log level (default: %(default)s)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve this worker's metrics for Prometheus at http://HOST:PORT/ (no API key: "
        "bind it where only Prometheus reaches); default: none",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address of --metrics-port (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(**({"worker_name": args.name} if args.name is not None else {}))
    except InvalidSettings as e:
        parser.error(str(e))
    configure_logging(args.log_level, settings.log_format)
    metrics = Metrics()
    with contextlib.ExitStack() as serving:
        if args.metrics_port is not None:
            try:
                server = metrics.serve(args.metrics_host, args.metrics_port)
            except OSError as e:
                where = f"{args.metrics_host}:{args.metrics_port}"
                print(f"ci-worker: error: cannot serve metrics on {where}: {e}", file=sys.stderr)
                return EXIT_UNAVAILABLE
            serving.callback(server.close)
            logger.info("metrics on http://%s:%d/", args.metrics_host, server.port)
        freeze_startup_objects()
        try:
            asyncio.run(run_worker(settings, metrics=metrics))
        except (OSError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            database = describe(configured_database(settings))
            print(f"ci-worker: error: cannot use the database {database}: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    return EXIT_STOPPED


if __name__ == "__main__":
    sys.exit(main())
