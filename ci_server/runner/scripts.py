"""The shell scripts a container runs: the builds of the images a job runs in, and a job.

An environment installs the project too, in editable mode, pointing at PROJECT_DIR, where
every job finds its source (an overlay of it: runner/scratch.py, or a copy): its jobs
install nothing (as tox's `usedevelop` reinstalls only when the packaging files change,
which here make a new environment). Files the
project's build wrote into its source tree (a generated `_version.py`) are kept in the
environment and copied under each job's source.

A project that cannot be installed editable, or whose build compiles extensions (they
would go stale as the source changes), is left out of its environment, which says so with
BY_SOURCE. It is then built on top of it by `source_script`, in an image of its own keyed
by the content of all its files (layers.py): a changed source builds anew, an unchanged one
reuses its build.

System packages (ci.toml `system_packages`) are installed by `system_script`, in an image
under the environment, the only build that runs apt and needs its privileges.

Everything is installed by those builds, which have the network; a job installs nothing
from the network (its tests have none).
"""

from __future__ import annotations

import inspect
import itertools
import json
import shlex
from collections.abc import Sequence

from ci_server.runner import collect_artifacts
from ci_server.runner.artifacts import ArtifactLimits
from ci_server.runner.executor import (
    ARTIFACTS_NAME,
    COLLECTED_NAME,
    INPUT_DIR,
    REPORT_DIR,
    REPORT_NAME,
)
from ci_server.runner.project import EDITABLE_INSTALL, PIP, InstallPlan

ENSURE_PYTEST = f"{{ python -m pytest --version >/dev/null 2>&1 || {PIP} pytest; }}"
INSTALL_FAILED_EXIT = 100
"""The script's exit status when installing failed (pytest's own statuses are 0 to 5)."""
TMP_FULL_EXIT = 101
"""A job's status when its /tmp was full at its end: it wrote as much as it may there."""
PYTEST_MISSING_EXIT = 102
"""A job's status when it has nothing to install and its image has no pytest: it must run
in an environment, which installs pytest."""
PROJECT_DIR = "/tmp/project"
JUNIT_FILE = REPORT_NAME
REPORT = f"{REPORT_DIR}/{REPORT_NAME}"
ARTIFACTS = f"{REPORT_DIR}/{ARTIFACTS_NAME}"
"""Where the server reads the job's report: the one file the container shares with it."""
PYTEST_REPORT = "/tmp/junit.xml"
"""Where pytest writes it; the script moves it to REPORT when the tests are over, so that
what the tests themselves wrote at REPORT, up to the file size limit, is still there for
the server to see."""
FULL_BELOW_KIB = 1024
INSTALLED_PROJECT = "/opt/ci-project"
"""In an environment image: `generated/`, what the project's build wrote into its source
tree, and `installed`, there when the project is installed in the environment (it says
how, for the job's log)."""
BY_SOURCE = f"{INSTALLED_PROJECT}/by-source"
"""In an environment image: the project is not installed in it, but built from each source
on top of it (source_script)."""
DEFAULT_PYTEST_ARGS = ("-p", "no:cacheprovider", "-o", "junit_family=xunit1")
"""pytest's own verbosity (a dot per test, failures in full): the results come from the
JUnit report, and `-v`'s line per test made a 64,000-test suite 1.5 times slower. `-v`
after `--` or in ci.toml's pytest_args asks for it."""
COLOUR_ARG = "--color=yes"
"""pytest prints colour, though its output is not a terminal: the dashboard renders it, and
`ci` strips it when its own output is not a terminal (ci_client/terminal.py)."""


def _colour(pytest_args: Sequence[str]) -> list[str]:
    """COLOUR_ARG, unless the user's own arguments choose (`--color NAME`, `--color=NAME`)."""
    chosen = any(arg == "--color" or arg.startswith("--color=") for arg in pytest_args)
    return [] if chosen else [COLOUR_ARG]


PYTHON_VERSION = 'echo "==> $(python --version 2>&1)"'
"""The job's log says which Python runs its tests (`==> Python 3.13.5`), whatever pytest's
verbosity (`-q` hides its header, which says it too)."""
SHARD_MODULE = "ci_shard"
"""The shard plugin's module (runner/shard_plugin.py's source), in a sharded job's inputs."""
SHARD_OPTION = "--ci-shard"
"""The plugin's option naming that file (shard_plugin.SHARD_OPTION: not imported here, the
plugin imports pytest)."""
SHARD_FILE = "shard.json"
"""A sharded job's shard and the durations to split by, in its inputs (shard_plugin.py)."""
SHARD_COLLECTED = f"{REPORT_DIR}/{COLLECTED_NAME}"
"""Where the shard plugin writes what the shard collected (runner/collected.py reads it)."""
PYTEST_CACHE = "/tmp/ci-pytest-cache"
"""pytest's cache directory when the server feeds it the last failures: on the tmpfs, away
from whatever cache_dir the project sets or its upload holds."""


def _failed_first(pytest_args: Sequence[str]) -> tuple[str, ...]:
    """pytest's options with its cache provider on, reading PYTEST_CACHE."""
    on = [arg for arg in DEFAULT_PYTEST_ARGS if arg not in ("-p", "no:cacheprovider")]
    order = () if only_last_failed(pytest_args) else ("--ff",)
    return (*on, "-o", f"cache_dir={PYTEST_CACHE}", *order)


def cache_disabled(pytest_args: Sequence[str]) -> bool:
    """Whether the user turned pytest's cache provider off (`ci submit test --no-ff` does)."""
    pairs = itertools.pairwise(pytest_args)
    return "-pno:cacheprovider" in pytest_args or ("-p", "no:cacheprovider") in pairs


def only_last_failed(pytest_args: Sequence[str]) -> bool:
    """Whether the user asked pytest to run only the last failures (`ci submit test --lf`)."""
    return "--lf" in pytest_args or "--last-failed" in pytest_args


def _write_last_failed(node_ids: Sequence[str]) -> str:
    """The shell command that writes pytest's last-failed set (one JSON line, quoted)."""
    content = json.dumps(dict.fromkeys(node_ids, True))
    folder = f"{PYTEST_CACHE}/v/cache"
    return f"mkdir -p {folder} && printf '%s' {shlex.quote(content)} > {folder}/lastfailed"


def _copy_source(*under: str) -> str:
    """Copy the source to PROJECT_DIR, over the trees `under` (copied first). Unless the
    worker laid the source there already (an overlay of /src: runner/scratch.py), in which
    case only what of `under` the source does not have is copied in."""
    copies = " && ".join(f"cp -R {tree}/. {PROJECT_DIR}" for tree in (*under, "/src"))
    added = "".join(f" && cp -R -n {tree}/. {PROJECT_DIR}" for tree in under)
    return (
        f'if [ -n "$(ls -A {PROJECT_DIR} 2>/dev/null)" ]; then true{added}; '
        f"else mkdir -p {PROJECT_DIR} && {copies}; fi && cd {PROJECT_DIR} || exit 1"
    )


def _install_step(title: str, commands: Sequence[str]) -> list[str]:
    if not commands:
        return []
    joined = " && ".join(commands)
    return [
        f"echo {shlex.quote(f'==> {title}')}",
        f"{{ {joined}; }} || {{ echo {shlex.quote(f'==> {title} failed')}; "
        f"exit {INSTALL_FAILED_EXIT}; }}",
    ]


def _as_root() -> list[str]:
    """A build runs as root, into the image's system Python, without pip's cache.

    The jobs' environment has PIP_USER set for their unprivileged user. Here, as root, it
    would put the dependencies in the user site under $HOME and leave $HOME owned by root,
    where the job's user could then install nothing, not even the project's own code. pip's
    cache would only make the image bigger.
    """
    return ["set -u", "export PIP_USER=0 PIP_NO_CACHE_DIR=1"]


def system_script(packages: Sequence[str]) -> str:
    """Install Debian packages with apt (as root, with the capabilities apt needs, which no
    other build or job gets), then drop apt's lists to keep the image small."""
    apt_get = "apt-get -q -o Dpkg::Use-Pty=0"
    install = [
        f"{apt_get} update",
        f"{apt_get} install -y --no-install-recommends {shlex.join(packages)}",
    ]
    return "\n".join(
        [
            "set -u",
            "export DEBIAN_FRONTEND=noninteractive",
            *_install_step(f"Installing system packages ({' '.join(packages)})", install),
            "rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb",
        ]
    )


def environment_script(plan: InstallPlan) -> str:
    """Install the dependencies (as root, into the image's system Python) to keep them, then
    the project in editable mode when it allows (see the module's docstring)."""
    return "\n".join(
        [
            *_as_root(),
            _copy_source(),
            *_install_step(
                f"Installing dependencies ({plan.description})",
                [*plan.dependency_commands, ENSURE_PYTEST],
            ),
            *_install_step("Installing the project's build requirements", plan.build_commands),
            *(_keep_project_installed() if plan.project_commands else []),
            f"cd / && rm -rf {PROJECT_DIR}",
        ]
    )


def _keep_generated(indent: str) -> list[str]:
    """Keep what the build wrote into the source tree (every file not in /src)."""
    generated = f"{INSTALLED_PROJECT}/generated"
    keep = f'cp -p "$f" "{generated}/$f"'
    lines = [
        f"mkdir -p {generated}",
        # build/ and dist/: what a regular install copied or packed, not the source tree's.
        "find . \\( -path ./build -o -path ./dist \\) -prune -o -type f -print "
        "| while IFS= read -r f; do",
        f'  [ -e "/src/$f" ] || {{ mkdir -p "{generated}/${{f%/*}}" && {keep}; }}',
        "done",
    ]
    return [indent + line for line in lines]


def _keep_project_installed() -> list[str]:
    generated, installed = f"{INSTALLED_PROJECT}/generated", f"{INSTALLED_PROJECT}/installed"
    by_source = "it is built from each new source, and each build is kept"
    return [
        f"echo {shlex.quote('==> Installing the project in editable mode')}",
        f"if {EDITABLE_INSTALL}; then",
        *_keep_generated("  "),
        f"  if [ -n \"$(find {generated} -name '*.so' -o -name '*.pyd')\" ]; then",
        f"    echo {shlex.quote(f'==> It has compiled extensions: {by_source}')}",
        "    python -m pip list --editable --format=freeze | sed 's/==.*//' "
        "| xargs -r python -m pip uninstall --yes --quiet",
        f"    rm -rf {INSTALLED_PROJECT} && mkdir -p {INSTALLED_PROJECT} && touch {BY_SOURCE}",
        "  else",
        f"    echo editable > {installed}",
        "  fi",
        "else",
        f"  echo {shlex.quote(f'==> It cannot be installed in editable mode: {by_source}')}",
        f"  mkdir -p {INSTALLED_PROJECT} && touch {BY_SOURCE}",
        "fi",
    ]


def source_script(plan: InstallPlan) -> str:
    """Build the project from this source on top of its environment (which has its build
    requirements): editable if it can be, the files its build wrote (compiled extensions)
    kept and copied under each job's source, else a regular install."""
    title = "Building the project from this source"
    return "\n".join(
        [
            *_as_root(),
            _copy_source(),
            *_install_step(title, plan.project_commands),
            *_keep_generated(""),
            f"rm -f {BY_SOURCE} && echo 'built from this source' > {INSTALLED_PROJECT}/installed",
            f"cd / && rm -rf {PROJECT_DIR}",
        ]
    )


def _pack_artifacts(patterns: Sequence[str], limits: ArtifactLimits) -> list[str]:
    """The exit trap's packing of the files `patterns` match in the project's copy into
    ARTIFACTS (collect_artifacts.py), when the project asks for any."""
    if not patterns:
        return []
    arguments = [
        ARTIFACTS,
        str(limits.max_files),
        str(limits.max_bytes),
        json.dumps(list(patterns)),
    ]
    pack = shlex.join(["python", "-I", "-c", inspect.getsource(collect_artifacts), *arguments])
    return [f"  [ -d {PROJECT_DIR} ] && (cd {PROJECT_DIR} && {pack})"]


def _finish(artifacts: Sequence[str] = (), limits: ArtifactLimits | None = None) -> list[str]:
    """The job's exit trap: pytest's report to REPORT unless the tests wrote there, the
    files the project's `artifacts` match packed into ARTIFACTS, and TMP_FULL_EXIT when
    /tmp was full (its content goes with the container: only now can it be seen)."""
    tmp_full = (
        "df -Pk /tmp 2>/dev/null | "
        f'{{ read -r _; read -r _ _ _ free _; [ "$free" -lt {FULL_BELOW_KIB} ]; }} 2>/dev/null'
    )
    return [
        "finish() {",
        "  status=$?",
        f"  [ -s {REPORT} ] || {{ cat {PYTEST_REPORT} > {REPORT}; }} 2>/dev/null",
        *_pack_artifacts(artifacts, limits or ArtifactLimits()),
        f"  if {tmp_full}; then",
        "    echo '==> /tmp is full'",
        f"    status={TMP_FULL_EXIT}",
        "  fi",
        '  exit "$status"',
        "}",
        "trap finish EXIT",
    ]


def _check_pytest() -> str:
    find = "import importlib.util, sys; sys.exit(importlib.util.find_spec('pytest') is None)"
    missing = "==> pytest is not installed in this image"
    return (
        f"python -c {shlex.quote(find)} || "
        f"{{ echo {shlex.quote(missing)}; exit {PYTEST_MISSING_EXIT}; }}"
    )


def job_script(
    plan: InstallPlan,
    pytest_args: Sequence[str],
    *,
    environment: bool,
    last_failed: Sequence[str] | None = None,
    shard: bool = False,
    artifacts: Sequence[str] = (),
    artifact_limits: ArtifactLimits | None = None,
) -> str:
    """Copy the read-only source and run pytest; install nothing from the network; at the
    end, pack the files `artifacts` patterns match (within `artifact_limits`).

    `last_failed`: node ids for pytest's cache provider, which is then on (in PYTEST_CACHE)
    with `--ff`, unless `pytest_args` ask for `--lf` (only those; all when none).

    `environment`: the image holds what the plan installs (the dependencies, the project
    when it has a build: checked at run time). Else the plan installs nothing and the image
    is the job's own, which may lack pytest: then the status is PYTEST_MISSING_EXIT.
    Otherwise it is pytest's, INSTALL_FAILED_EXIT, or TMP_FULL_EXIT.

    `shard`: run only the job's shard, by the plugin and the file in INPUT_DIR.
    """
    options = DEFAULT_PYTEST_ARGS if last_failed is None else _failed_first(pytest_args)
    sharding = ("-p", SHARD_MODULE, f"{SHARD_OPTION}={INPUT_DIR}/{SHARD_FILE}") if shard else ()
    pytest = shlex.join(
        [
            "python",
            "-m",
            "pytest",
            *options,
            *_colour(pytest_args),
            f"--junitxml={PYTEST_REPORT}",
            *sharding,
            *pytest_args,
        ]
    )
    if shard:  # the plugin's module is found in INPUT_DIR, before the project's own path
        pytest = f'PYTHONPATH="{INPUT_DIR}${{PYTHONPATH:+:$PYTHONPATH}}" {pytest}'
    if last_failed is not None:
        pytest = f"{_write_last_failed(last_failed)} && {pytest}"
    install_project = _install_step(
        "Installing the project", [*plan.build_commands, *plan.project_commands]
    )
    if not environment:
        prepare = [_copy_source(), _check_pytest()]
    elif not plan.project_commands:
        prepare = [_copy_source()]
    else:
        prepare = [
            f"if [ -e {INSTALLED_PROJECT}/installed ]; then",
            f"  {_copy_source(f'{INSTALLED_PROJECT}/generated')}",
            '  echo "==> The project is installed in the environment '
            f'($(cat {INSTALLED_PROJECT}/installed))"',
            "else",
            f"  {_copy_source()}",
            *(f"  {line}" for line in install_project),
            "fi",
        ]
    return "\n".join(
        [
            "set -u",
            *_finish(artifacts, artifact_limits),
            *prepare,
            PYTHON_VERSION,
            f"echo {shlex.quote('==> ' + pytest)}",
            pytest,
        ]
    )
