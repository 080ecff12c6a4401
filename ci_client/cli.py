"""`ci`: submit a project's tests, follow jobs, list them. Parsing and printing only.

Exit codes: 0 the job passed; 1 it did not (tests failed, collection errors, failed install,
timed out, cancelled, errored); 4 pytest's usage error and 5 no tests collected, as pytest
says them; 2 a usage or connection problem of `ci` itself; 130 interrupted by Ctrl-C. A
group of jobs (`--python`, `--shards`) exits with its worst job's code: 1, then 4, then 5.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ci_client.client import GROUP_PREFIX, CIClient, ClientError, Event, NotAuthenticated
from ci_client.config import DEFAULT_SERVER_URL, ConfigError, Connection, config_path, resolve
from ci_client.downloads import UnsafeArtifact, target_of
from ci_client.render import (
    PROBLEM_OUTCOMES,
    format_event,
    format_group_outcome,
    format_outcome,
    is_group,
    job_labels,
    print_artifacts,
    print_group_details,
    print_job_details,
    print_jobs_table,
    print_test_history,
)
from ci_client.terminal import SafeStream
from ci_common.sizes import format_size
from ci_common.version import version_line

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    """Messages about the job (not its output) go to stderr, so stdout is the test log.

    Like everything `ci` prints that a job may have written, through a `SafeStream`."""
    print(message, file=SafeStream(sys.stderr), flush=True)


PYTEST_EXITS_KEPT = (4, 5)
"""pytest's own meaning kept: 4 usage error (bad arguments after `--`), 5 no tests collected."""


def _exit_code(job: dict[str, Any]) -> int:
    if is_group(job):
        worst = max((_exit_code(member) for member in job["jobs"]), key=EXIT_RANK.index)
        # Passing jobs, yet the group failed: its shards did not collect the same tests.
        return EXIT_FAILED if worst == EXIT_PASSED and job.get("success") is False else worst
    if job.get("success"):
        return EXIT_PASSED
    if job.get("status") == "failed" and job.get("exit_code") in PYTEST_EXITS_KEPT:
        return job["exit_code"]
    return EXIT_FAILED


EXIT_RANK = (EXIT_PASSED, 5, 4, EXIT_FAILED)
"""A job's exit codes, best first: a group exits with its worst job's."""


def _follow(client: CIClient, job_id: str, *, after: int | None, tail: int | None) -> int:
    """Print the job's events until its end; return the exit code for its outcome."""
    out = SafeStream(sys.stdout)
    for event in client.events(job_id, after=after, tail=tail):
        if event.type == "end":
            job = {"job_id": job_id, **event.data}
            _say(format_outcome(job))
            return _exit_code(job)
        line = format_event(event)
        if line is not None:
            if event.type == "log" and event.data.get("stream") != "system":
                print(line, file=out, flush=True)
            else:
                _say(line)
    raise ClientError("the event stream ended before the job did")


def _follow_group(
    client: CIClient, group: dict[str, Any], *, after: int | None, tail: int | None
) -> int:
    """Print the events of every job of the group as they come, each line prefixed with
    its job's label (`py3.13 2/4 | ...`), until all have ended; then the group's merged
    outcome. Return the exit code of its worst job."""
    prefixes = job_labels(group["jobs"])
    arrivals: queue.Queue[tuple[str, Event | Exception | None]] = queue.Queue()

    def pump(job_id: str) -> None:
        try:
            for event in client.copy().events(job_id, after=after, tail=tail):
                arrivals.put((job_id, event))
        except Exception as e:  # shown by the main thread, which stops there
            arrivals.put((job_id, e))
        finally:
            arrivals.put((job_id, None))

    for job_id in prefixes:
        threading.Thread(target=pump, args=(job_id,), name=f"ci-{job_id}", daemon=True).start()
    out, streams = SafeStream(sys.stdout), len(prefixes)
    while streams:
        try:
            job_id, arrival = arrivals.get(timeout=0.5)  # a timeout lets Ctrl-C through
        except queue.Empty:
            continue
        if arrival is None:
            streams -= 1
        elif isinstance(arrival, Exception):
            raise arrival
        else:
            _print_prefixed(arrival, job_id, prefixes[job_id], out)
    ended = client.get_group(group["group_id"])
    _say(format_group_outcome(ended))
    return _exit_code(ended)


def _print_prefixed(event: Event, job_id: str, prefix: str, out: SafeStream) -> None:
    if event.type == "end":
        _say(prefix + format_outcome({"job_id": job_id, **event.data}))
        return
    text = format_event(event)
    if text is None:
        return
    lines = "\n".join(prefix + line for line in text.split("\n"))
    if event.type == "log" and event.data.get("stream") != "system":
        print(lines, file=out, flush=True)
    else:
        _say(lines)


def _upload(client: CIClient, args: argparse.Namespace) -> dict[str, Any]:
    """Send the project in the current directory (only what the server lacks, or a zip to
    an older server), submit it and return the job (or the group of jobs) made."""
    # Imported here: only `submit` needs them, and every other command starts faster.
    from ci_client.archive import check_project_root
    from ci_client.client import ContentsMissing, ServerWithoutContents

    root = Path.cwd()
    check_project_root(root)
    options: dict[str, Any] = {
        "timeout_seconds": args.timeout,
        "pytest_args": [*_order_args(args), *args.pytest_args],
        "no_cache": args.no_cache,
        "project": args.project,
        "directory": root.name,
        "python": args.python,
        "shards": args.shards,
    }
    if args.zip:
        return _send_zip(client, root, options)
    try:
        try:
            return _send_contents(client, root, options)
        except ContentsMissing:  # cleaned up on the server meanwhile: once more
            return _send_contents(client, root, options)
    except ServerWithoutContents:
        return _send_zip(client, root, options)


def _send_contents(client: CIClient, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    from ci_client.contents import send, snapshot
    from ci_client.hashcache import HashCache, cache_dir

    with HashCache(cache_dir() / "hashes.sqlite3", root) as cache:
        snap = snapshot(root, cache)
    sent = send(client, snap)
    _say(
        f"Sent {sent.files:,} of {snap.file_count:,} files ({format_size(sent.bytes)} of "
        f"{format_size(snap.total_bytes)}) to {client.base_url}"
    )
    return client.submit_tree(snap.root, **options)


def _send_zip(client: CIClient, root: Path, options: dict[str, Any]) -> dict[str, Any]:
    from ci_client.archive import build_archive

    with tempfile.TemporaryDirectory(prefix="ci-upload-") as tmp:
        archive = Path(tmp) / "project.zip"
        summary = build_archive(root, archive)
        _say(
            f"Uploading {summary.files} files ({format_size(summary.source_bytes)}, "
            f"{format_size(summary.archive_bytes)} zipped) to {client.base_url}"
        )
        return client.submit(archive, **options)


def _versions(text: str) -> list[str]:
    """`3.11,3.13`: the Python versions to run the suite under."""
    versions = [version.strip() for version in text.split(",") if version.strip()]
    if not versions:
        raise argparse.ArgumentTypeError("no Python version given")
    return versions


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not 1 or more")
    return value


def _count(text: str) -> int:
    """A command-line count: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or more")
    return value


def _order_args(args: argparse.Namespace) -> list[str]:
    """--lf, --no-ff and --rerun-failures as pytest's own: the server feeds pytest the
    project's last failures unless its cache provider is off, and installs
    pytest-rerunfailures for `--reruns`."""
    reruns = ["--reruns", str(args.rerun_failures)] if args.rerun_failures else []
    if args.lf:
        return ["--lf", *reruns]
    return ["-p", "no:cacheprovider", *reruns] if args.no_ff else reruns


def cmd_submit(client: CIClient, args: argparse.Namespace) -> int:
    submitted: dict[str, Any] | None = None
    try:
        submitted = _upload(client, args)
        if is_group(submitted):
            return _submitted_group(client, submitted, args)
        job_id = submitted["job_id"]
        if args.run_async:
            print(f"Job submitted: {job_id}", flush=True)
            return EXIT_PASSED
        _say(f"Job {job_id} submitted. Reattach from another terminal with: ci wait {job_id}")
        return _follow(client, job_id, after=0, tail=None)
    except KeyboardInterrupt:
        # A foreground job belongs to this terminal: Ctrl-C means the user wants it gone.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if submitted is None:
            _say("\nInterrupted before the job was submitted.")
            return EXIT_INTERRUPTED
        _cancel_submitted(client, submitted)
        return EXIT_INTERRUPTED


def _submitted_group(client: CIClient, group: dict[str, Any], args: argparse.Namespace) -> int:
    group_id = group["group_id"]
    if args.run_async:
        print(f"Group submitted: {group_id}", flush=True)
        return EXIT_PASSED
    jobs = ", ".join(f"{job['label']} {job['job_id']}" for job in group["jobs"])
    _say(
        f"Group {group_id} submitted: {len(group['jobs'])} jobs ({jobs}). "
        f"Reattach from another terminal with: ci wait {group_id}"
    )
    return _follow_group(client, group, after=0, tail=None)


def _cancel_submitted(client: CIClient, submitted: dict[str, Any]) -> None:
    what, identifier = _kind_and_id(submitted)
    if is_group(submitted):
        _say(f"\nInterrupted: cancelling group {identifier} (its {len(submitted['jobs'])} jobs)...")
    else:
        _say(f"\nInterrupted: cancelling job {identifier}...")
    try:
        _say(format_outcome(_cancel(client, identifier)[0]))
    except ClientError as e:
        _say(f"could not cancel {what} {identifier}: {e}")


def _kind_and_id(item: dict[str, Any]) -> tuple[str, str]:
    return ("group", item["group_id"]) if is_group(item) else ("job", item["job_id"])


def _cancel(client: CIClient, identifier: str) -> tuple[dict[str, Any], bool]:
    if _is_group_id(identifier):
        return client.cancel_group(identifier)
    return client.cancel(identifier)


def _is_group_id(identifier: str) -> bool:
    return identifier.startswith(GROUP_PREFIX)


def cmd_wait(client: CIClient, args: argparse.Namespace) -> int:
    grouped = _is_group_id(args.job_id)
    job = client.get_group(args.job_id) if grouped else client.get_job(args.job_id)
    try:
        if args.all:
            return _follow_any(client, job, after=0, tail=None)
        if job["success"] is not None:
            _say(format_outcome(job))
            return _exit_code(job)
        return _follow_any(client, job, after=None, tail=0)
    except KeyboardInterrupt:
        what = "group" if grouped else "job"
        _say(
            f"\nDetached: {what} {args.job_id} keeps running. Reattach with: ci wait {args.job_id}"
        )
        return EXIT_INTERRUPTED


def _follow_any(
    client: CIClient, job: dict[str, Any], *, after: int | None, tail: int | None
) -> int:
    """Follow a job, or every job of a group."""
    if is_group(job):
        return _follow_group(client, job, after=after, tail=tail)
    return _follow(client, job["job_id"], after=after, tail=tail)


def cmd_list(client: CIClient, args: argparse.Namespace) -> int:
    jobs = client.list_jobs(limit=args.limit, project=args.project, grouped=True)
    if args.json:
        print(json.dumps(jobs, indent=2))  # JSON escapes every control character but DEL
    elif jobs:
        print_jobs_table(jobs, SafeStream(sys.stdout))
    elif args.project is not None:
        _say(f"No jobs of project {args.project!r}.")
    else:
        _say("No jobs yet. Submit one with: ci submit test")
    return EXIT_PASSED


def cmd_tests(client: CIClient, args: argparse.Namespace) -> int:
    project = args.project
    if project is None:
        latest = client.list_jobs(limit=1)
        project = latest[0].get("project") if latest else None
        if project is None:
            _say("No project yet: submit one with `ci submit test`, or pass --project NAME.")
            return EXIT_PASSED
    tests = client.test_history(project, runs=args.runs)
    if args.flaky:
        tests = [test for test in tests if test["flaky_runs"]]
        tests = sorted(tests, key=lambda test: test["flake_rate"], reverse=True)
    if args.slowest is not None:
        tests = sorted(tests, key=lambda test: test["median_duration"], reverse=True)
        tests = tests[: args.slowest]
    if args.json:
        print(json.dumps(tests, indent=2))
    elif tests:
        _say(f"Project {project}: each test's latest runs, the newest on the right")
        print_test_history(tests, SafeStream(sys.stdout))
    elif args.flaky:
        _say(f"No flaky tests in project {project!r}'s history.")
    else:
        _say(f"No test results of project {project!r} yet.")
    return EXIT_PASSED


def cmd_show(client: CIClient, args: argparse.Namespace) -> int:
    out = SafeStream(sys.stdout)
    if not _is_group_id(args.job_id):
        _show_job(client, client.get_job(args.job_id), out)
        return EXIT_PASSED
    group = client.get_group(args.job_id)
    print_group_details(group, out)
    for job in group["jobs"]:
        print(file=out)
        _show_job(client, job, out)
    return EXIT_PASSED


def _show_job(client: CIClient, job: dict[str, Any], out: SafeStream) -> None:
    failures = client.test_results(job["job_id"], outcomes=(*PROBLEM_OUTCOMES, "flaky"))
    history = client.test_history(job["project"]) if job.get("project") and failures else []
    print_job_details(job, failures, out, history)
    print_artifacts(job["job_id"], client.artifacts(job["job_id"]), out)


def cmd_artifacts(client: CIClient, args: argparse.Namespace) -> int:
    artifacts = client.artifacts(args.job_id)
    if not artifacts:
        _say(f"Job {args.job_id} has no artifacts.")
        return EXIT_PASSED
    folder = Path(args.output or f"artifacts-{args.job_id}")
    folder.mkdir(parents=True, exist_ok=True)
    written, refused = 0, 0
    for artifact in artifacts:
        try:
            target = target_of(folder, str(artifact.get("path")))
            client.download_artifact(args.job_id, artifact, target)
        except UnsafeArtifact as e:
            print(f"ci: not written: {e}", file=SafeStream(sys.stderr))
            refused += 1
            continue
        written += int(artifact["size"])
    count = len(artifacts) - refused
    _say(f"Downloaded {count} file(s) ({format_size(written)}) to {folder}")
    return EXIT_USAGE if refused else EXIT_PASSED


def cmd_logs(client: CIClient, args: argparse.Namespace) -> int:
    if _is_group_id(args.job_id):
        _follow_group(client, client.get_group(args.job_id), after=0, tail=None)
        return EXIT_PASSED
    client.get_job(args.job_id)
    _follow(client, args.job_id, after=0, tail=None)
    return EXIT_PASSED


def cmd_cancel(client: CIClient, args: argparse.Namespace) -> int:
    item, changed = _cancel(client, args.job_id)
    if changed:
        _say(format_outcome(item))
    else:
        what = _kind_and_id(item)[0].capitalize()
        _say(f"{what} {args.job_id} had already finished ({item['status']}); nothing to cancel.")
    return EXIT_PASSED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ci",
        description="Run your project's tests on a CI server, in a clean container.",
        epilog="Exit codes: 0 passed, 1 failed (or timed out, cancelled, errored), "
        "2 usage or connection error, 4/5 pytest usage error/no tests, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=version_line("ci"))
    parser.add_argument(
        "--server",
        help="the CI server's URL (default: $CI_SERVER_URL, else `server` in the config file, "
        f"else {DEFAULT_SERVER_URL})",
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"your API key, ci_... (default: $CI_API_KEY, else `api_key` in {config_path()})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit",
        help="upload the project in the current directory and run its tests",
        description="Zip the project in the current directory, upload it and run its tests. "
        "Arguments after `--` go to pytest.",
    )
    submit.add_argument("what", choices=["test"], help="what to run (only `test` for now)")
    submit.add_argument(
        "--async",
        dest="run_async",
        action="store_true",
        help="print the job id and return at once",
    )
    submit.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the job after this long"
    )
    submit.add_argument(
        "--no-cache",
        action="store_true",
        help="install the dependencies afresh instead of reusing the saved environment",
    )
    submit.add_argument(
        "--zip",
        action="store_true",
        help="send the whole project as a zip, as for a server older than content uploads "
        "(by default only the files the server does not have yet are sent)",
    )
    submit.add_argument(
        "--project",
        metavar="NAME",
        help="the project's name (default: ci.toml's `project`, else the packaging metadata's "
        "name, else the directory's)",
    )
    order = submit.add_mutually_exclusive_group()
    order.add_argument(
        "--lf",
        action="store_true",
        help="run only the tests that failed in the project's last finished job (all if none)",
    )
    order.add_argument(
        "--no-ff",
        action="store_true",
        help="keep pytest's order (by default the last job's failures run first)",
    )
    submit.add_argument(
        "--rerun-failures",
        type=_count,
        default=0,
        metavar="N",
        help="rerun a failing test up to N times (pytest-rerunfailures): one that then passes "
        "is flaky, and does not fail the job",
    )
    submit.add_argument(
        "--python",
        type=_versions,
        default=[],
        metavar="VERSIONS",
        help="run the suite under each of these Python versions, a job each, at once: "
        "3.11,3.13 (default: ci.toml's `python`, else the server's default image)",
    )
    submit.add_argument(
        "--shards",
        type=_positive,
        metavar="N",
        help="split the suite over N jobs run at once, per Python version (default: "
        "ci.toml's `shards`, else 1)",
    )
    submit.set_defaults(handler=cmd_submit, pytest_args=[])

    wait = commands.add_parser(
        "wait",
        help="follow a job's (or a group's) output until it ends",
        description="Ctrl-C only detaches.",
    )
    wait.add_argument("job_id", help="a job's id, or a group's (g-...)")
    wait.add_argument("--all", action="store_true", help="replay the whole log from the start")
    wait.set_defaults(handler=cmd_wait)

    listing = commands.add_parser("list", help="show jobs, newest first (a group as one row)")
    listing.add_argument(
        "--json", action="store_true", help="a JSON array, for scripts (a group with its jobs)"
    )
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: 50)")
    listing.add_argument("--project", metavar="NAME", help="only the jobs of this project")
    listing.set_defaults(handler=cmd_list)

    show = commands.add_parser(
        "show", help="a job's (or a group's and each of its jobs') summary and failing tests"
    )
    show.add_argument("job_id", help="a job's id, or a group's (g-...)")
    show.set_defaults(handler=cmd_show)

    tests = commands.add_parser(
        "tests",
        help="each test's recent outcomes, failure rate and median duration in a project",
        description="Outcomes are pytest's letters: . passed, F failed, E error, s skipped, "
        "x xfailed, R flaky (failed, then passed on a rerun).",
    )
    tests.add_argument(
        "--project", metavar="NAME", help="the project (default: that of your latest job)"
    )
    tests.add_argument("--json", action="store_true", help="a JSON array, for scripts")
    tests.add_argument(
        "--flaky",
        action="store_true",
        help="only the flaky tests (failed, then passed on a rerun, or passed and failed on "
        "unchanged code), the flakiest first",
    )
    tests.add_argument(
        "--slowest", type=int, metavar="N", help="only the N slowest tests, by median duration"
    )
    tests.add_argument(
        "--runs", type=int, metavar="N", help="each test's latest N runs (default and most: 100)"
    )
    tests.set_defaults(handler=cmd_tests)

    artifacts = commands.add_parser(
        "artifacts", help="download a job's artifacts (its report, the files ci.toml names)"
    )
    artifacts.add_argument("job_id")
    artifacts.add_argument(
        "-o", "--output", metavar="DIR", help="where to write them (default: artifacts-<job id>)"
    )
    artifacts.set_defaults(handler=cmd_artifacts)

    logs = commands.add_parser("logs", help="print a job's whole log (following it if running)")
    logs.add_argument("job_id", help="a job's id, or a group's (g-...: every job's, prefixed)")
    logs.set_defaults(handler=cmd_logs)

    cancel = commands.add_parser("cancel", help="stop a queued or running job (or group)")
    cancel.add_argument("job_id", help="a job's id, or a group's (g-...: all its jobs)")
    cancel.set_defaults(handler=cmd_cancel)
    return parser


def _fail(message: str) -> NoReturn:
    print(f"ci: error: {message}", file=SafeStream(sys.stderr))
    raise SystemExit(EXIT_USAGE)


def _authentication_help(connection: Connection, reason: str) -> str:
    """One line: what went wrong with the key, and how to get and give a good one."""
    fix = (
        "create one with `ci-admin key create --email EMAIL --name NAME` on the server, "
        "then pass it with --api-key, set CI_API_KEY, or put the line "
        f'api_key = "ci_..." in {config_path()}'
    )
    if connection.api_key is None:
        return f"{connection.server} requires an API key and none was given: {fix}"
    return (
        f"{connection.server} refused the API key from {connection.key_source} ({reason}). "
        f"To use another key: {fix}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, pytest_args = argv[:split], argv[split + 1 :]
    args = build_parser().parse_args(argv)
    if pytest_args:
        if args.command != "submit":
            _fail("arguments after `--` are passed to pytest, only with `ci submit test`")
        args.pytest_args = pytest_args
    try:
        connection = resolve(args.server, args.api_key)
    except ConfigError as e:
        _fail(str(e))
    client = CIClient(connection.server, api_key=connection.api_key)
    try:
        return args.handler(client, args)
    except NotAuthenticated as e:
        _fail(_authentication_help(connection, str(e)))
    except ClientError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ci list --json | head`): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PASSED


if __name__ == "__main__":
    sys.exit(main())
