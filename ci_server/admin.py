"""`ci-admin`: users and API keys, the workers, and retention (`prune`), straight in the
server's database: --db (a file or a postgresql:// URL), else CI_DATABASE_URL, else
CI_DB_PATH.

It may run while the server does (SQLite in WAL mode, or PostgreSQL): a new key works at
once, a revoked key or a deactivated user stops working at once for new requests and within
a few seconds for open event streams; the server cancels a deactivated user's queued jobs
(it alone changes jobs, so that their watchers get their `end` event). Exit codes: 0 done,
2 a usage error or a request that cannot be done (unknown email, email taken, deactivated
user...).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn

import asyncpg

from ci_common.tables import local_time, print_table
from ci_common.version import version_line
from ci_server import accounts
from ci_server.models import CIError, JobStatus, WorkerInfo
from ci_server.retention import prune_environments, prune_jobs, prune_orphan_artifacts
from ci_server.runner.docker import DockerExecutor
from ci_server.runner.executor import ExecutorError
from ci_server.settings import InvalidSettings, Settings, load_settings
from ci_server.store.factory import (
    Database,
    configured_database,
    describe,
    open_blob_store,
    parse_database,
    store_at,
)
from ci_server.store.repository import Store
from ci_server.users import User

EXIT_OK = 0
EXIT_USAGE = 2
CONFIG_HINT = "~/.config/ci/config.toml"

Handler = Callable[[Store, argparse.Namespace], Awaitable[int]]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _describe(user: User) -> str:
    return f"{user.name} <{user.email}>"


# -- users ------------------------------------------------------------------------------------


async def user_create(store: Store, args: argparse.Namespace) -> int:
    user = await accounts.create_user(store, name=args.name, email=args.email, is_admin=args.admin)
    role = "an admin" if user.is_admin else "a user"
    print(f"Created {role}: {_describe(user)}, id {user.id}")
    _say(f"Give them a key with: ci-admin key create --email {user.email} --name NAME")
    return EXIT_OK


async def user_list(store: Store, args: argparse.Namespace) -> int:
    users = await store.list_users()
    if args.json:
        rows = [
            {
                "id": u.id,
                "name": u.name,
                "email": u.email,
                "is_admin": u.is_admin,
                "active": u.active,
                "created_at": u.created_at.isoformat(),
            }
            for u in users
        ]
        print(json.dumps(rows, indent=2))
    elif users:
        headers = ("ID", "NAME", "EMAIL", "ROLE", "STATUS", "CREATED")
        print_table(
            headers,
            [
                (
                    u.id,
                    u.name,
                    u.email,
                    "admin" if u.is_admin else "user",
                    "active" if u.active else "deactivated",
                    local_time(u.created_at),
                )
                for u in users
            ],
            sys.stdout,
        )
    else:
        _say("No users yet. Create one with: ci-admin user create --name NAME --email EMAIL")
    return EXIT_OK


async def user_deactivate(store: Store, args: argparse.Namespace) -> int:
    before = await accounts.user_by_email(store, args.email)
    user = await accounts.deactivate_user(store, args.email)
    if not before.active:
        print(f"{_describe(user)} was already deactivated.")
        return EXIT_OK
    print(f"Deactivated {_describe(user)}: their API keys no longer work.")
    queued = [j for j in await store.jobs_with_status(JobStatus.QUEUED) if j.owner_id == user.id]
    _say(
        f"Within {accounts.RECHECK_SECONDS:g}s a running server closes their open event "
        f"streams and cancels their {len(queued)} queued job(s); running jobs may finish."
    )
    return EXIT_OK


# -- keys -------------------------------------------------------------------------------------


async def key_create(store: Store, args: argparse.Namespace) -> int:
    record, user, key = await accounts.create_key(store, email=args.email, name=args.name)
    _say(
        f"Created API key {record.id} ({record.name}) for {_describe(user)}. "
        "It is shown only this once; keep it secret:"
    )
    print(key, flush=True)
    _say(
        "Use it with `export CI_API_KEY=<key>`, or `ci --api-key <key> ...`, or the line "
        f'`api_key = "<key>"` in {CONFIG_HINT} (chmod 600).\n'
        f"Revoke it with: ci-admin key revoke {record.id}"
    )
    return EXIT_OK


async def key_list(store: Store, args: argparse.Namespace) -> int:
    """Never shows a key or its hash: they are not needed to manage keys."""
    owner = await accounts.user_by_email(store, args.email) if args.email else None
    keys = await store.list_api_keys(owner.id if owner else None)
    emails = {u.id: u.email for u in await store.list_users()}
    if not keys:
        _say("No API keys. Create one with: ci-admin key create --email EMAIL --name NAME")
        return EXIT_OK
    headers = ("ID", "NAME", "OWNER", "CREATED", "LAST USED", "REVOKED")
    rows = [
        (
            k.id,
            k.name,
            emails.get(k.user_id, k.user_id),
            local_time(k.created_at),
            local_time(k.last_used_at),
            local_time(k.revoked_at),
        )
        for k in keys
    ]
    print_table(headers, rows, sys.stdout)
    return EXIT_OK


async def key_revoke(store: Store, args: argparse.Namespace) -> int:
    before = await store.get_api_key(args.key_id)
    key = await accounts.revoke_key(store, args.key_id)
    if before.revoked:
        print(f"API key {key.id} ({key.name}) was already revoked on {local_time(key.revoked_at)}.")
    else:
        print(f"Revoked API key {key.id} ({key.name}): it no longer works.")
    return EXIT_OK


# -- workers ----------------------------------------------------------------------------------


def worker_state(worker: WorkerInfo, timeout: float) -> str:
    """alive: it beats; stopped: it stopped on request; lost: silent for `timeout` seconds
    (its running jobs end `error`)."""
    if worker.stopped_at is not None:
        return "stopped"
    return "alive" if worker.silent_seconds < timeout else "lost"


async def workers_list(store: Store, args: argparse.Namespace) -> int:
    workers = await store.list_workers()
    timeout = load_settings().worker_timeout
    running: dict[str, list[str]] = {}
    for job in await store.jobs_with_status(JobStatus.RUNNING):
        running.setdefault(job.worker or "", []).append(job.id)
    if args.json:
        rows = [
            {
                "name": w.name,
                "state": worker_state(w, timeout),
                "last_heartbeat": w.heartbeat_at.isoformat(),
                "seconds_since_heartbeat": round(w.silent_seconds, 1),
                "started_at": w.started_at.isoformat(),
                "stopped_at": w.stopped_at.isoformat() if w.stopped_at else None,
                "max_jobs": w.max_jobs,
                "running_jobs": running.get(w.name, []),
            }
            for w in workers
        ]
        print(json.dumps(rows, indent=2))
    elif workers:
        headers = ("WORKER", "STATE", "LAST HEARTBEAT", "STARTED", "JOBS", "RUNNING")
        print_table(
            headers,
            [
                (
                    w.name,
                    worker_state(w, timeout),
                    f"{w.silent_seconds:.0f}s ago",
                    local_time(w.started_at),
                    f"{len(running.get(w.name, []))}/{w.max_jobs}",
                    " ".join(running.get(w.name, [])) or "-",
                )
                for w in workers
            ],
            sys.stdout,
        )
    else:
        _say("No workers yet: start `ci-server` (it runs one) or `ci-worker --name NAME`.")
    return EXIT_OK


# -- retention --------------------------------------------------------------------------------


def _settings_for(database: Database) -> Settings:
    """The CI_* settings, with the database `--db` named: its data folder, its blob store
    and its images (named after it) are the server's of that database."""
    settings = load_settings()
    if isinstance(database, Path):
        return settings.model_copy(update={"db_path": database, "database_url": None})
    return settings.model_copy(update={"database_url": database})


async def prune(store: Store, args: argparse.Namespace) -> int:
    settings = _settings_for(args.database)
    verb = "Would remove" if args.dry_run else "Removed"
    async with open_blob_store(settings) as blobs:
        pruned = await prune_jobs(store, blobs, settings, dry_run=args.dry_run)
        orphans = await prune_orphan_artifacts(store, blobs, dry_run=args.dry_run)
    for job in pruned.jobs:
        print(f"job {job.id}  {job.status.value}  ended {local_time(job.finished_at)}")
    for key in orphans:
        print(f"orphaned artifact {key}")
    _say(
        f"{verb} {len(pruned.jobs)} finished job(s) and {pruned.blobs} artifact(s), "
        f"{len(orphans)} orphaned artifact(s)"
    )
    if args.no_images:
        return EXIT_OK
    try:
        async with DockerExecutor(settings.instance_id, base_url=settings.docker_host) as docker:
            images = await prune_environments(store, docker, settings, dry_run=args.dry_run)
    except ExecutorError as e:
        _say(f"Environment images: none removed ({e})")
        return EXIT_OK
    for tag in images:
        print(f"image {tag}")
    _say(f"{verb} {len(images)} environment image(s)")
    return EXIT_OK


# -- the command line -------------------------------------------------------------------------


def _database_argument(value: str) -> Database:
    try:
        return parse_database(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ci-admin",
        description="Manage the CI server's users and API keys, and see its workers, in its "
        "database.",
        epilog="Exit codes: 0 done, 2 usage error or a request that cannot be done.",
    )
    parser.add_argument("--version", action="version", version=version_line("ci-admin"))
    parser.add_argument(
        "--db",
        type=_database_argument,
        help="the server's database: an SQLite file or a postgresql:// URL "
        "(default: $CI_DATABASE_URL, else $CI_DB_PATH, else ci_jobs.db)",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{user,key,workers,prune}")

    users = groups.add_parser("user", help="create, list and deactivate users")
    user_commands = users.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = user_commands.add_parser("create", help="add a user")
    create.add_argument("--name", required=True)
    create.add_argument("--email", required=True, help="unique; names the user in commands")
    create.add_argument("--admin", action="store_true", help="may see and cancel every job")
    create.set_defaults(handler=user_create)
    listing = user_commands.add_parser("list", help="every user")
    listing.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    listing.set_defaults(handler=user_list)
    deactivate = user_commands.add_parser(
        "deactivate", help="lock a user out: their keys stop working"
    )
    deactivate.add_argument("--email", required=True)
    deactivate.set_defaults(handler=user_deactivate)

    keys = groups.add_parser("key", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="command", required=True, metavar="COMMAND")
    key_new = key_commands.add_parser("create", help="a new key for a user, shown once")
    key_new.add_argument("--email", required=True, help="the user the key acts as")
    key_new.add_argument("--name", required=True, help="what the key is for, e.g. laptop")
    key_new.set_defaults(handler=key_create)
    key_listing = key_commands.add_parser("list", help="keys (never the keys themselves)")
    key_listing.add_argument("--email", help="only this user's keys")
    key_listing.set_defaults(handler=key_list)
    revoke = key_commands.add_parser("revoke", help="stop a key from working, for good")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the ID column of `ci-admin key list`")
    revoke.set_defaults(handler=key_revoke)

    workers = groups.add_parser(
        "workers", help="the workers: state, last heartbeat, the jobs they run now"
    )
    workers.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    workers.set_defaults(handler=workers_list)

    pruning = groups.add_parser(
        "prune",
        help="remove what retention no longer keeps: old finished jobs with all they own, "
        "stale environment images (CI_RETENTION_DAYS, CI_MAX_JOBS_KEPT, CI_ENV_MAX_AGE_DAYS)",
    )
    pruning.add_argument(
        "--dry-run", action="store_true", help="print what would go, remove nothing"
    )
    pruning.add_argument(
        "--no-images", action="store_true", help="leave the environment images alone"
    )
    pruning.set_defaults(handler=prune)
    return parser


def _fail(message: str) -> NoReturn:
    print(f"ci-admin: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _check_database(path: Path) -> None:
    """Open the file once, synchronously: a path that cannot be a database fails here with
    a plain sqlite3/OS error (aiosqlite 0.22 leaves a thread's traceback when it fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA user_version")


async def _run(handler: Handler, database: Database, args: argparse.Namespace) -> int:
    async with store_at(database) as store:
        return await handler(store, args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()  # checked even with --db: `workers` reads one
        database: Database = args.db or configured_database(settings)
    except InvalidSettings as e:
        _fail(str(e))
    try:
        if isinstance(database, Path):
            _check_database(database)
        args.database = database
        return asyncio.run(_run(args.handler, database, args))
    except CIError as e:
        _fail(str(e))
    except (sqlite3.Error, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
        _fail(f"cannot use the database {describe(database)}: {e}")


if __name__ == "__main__":
    sys.exit(main())
