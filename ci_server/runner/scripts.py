"""The shell scripts a container runs: the builds of the images a job runs in, and a job.

An environment installs the project too, in editable mode, pointing at PROJECT_DIR, where
every job copies its source: its jobs install nothing (as tox's `usedevelop` reinstalls
only when the packaging files change, which here make a new environment). Files the
project's build wrote into its source tree (a generated `_version.py`) are kept in the
environment and copied under each job's source.

A project that cannot be installed editable, or whose build compiles extensions (they
would go stale as the source changes), is left out of its environment, which says so with
BY_SOURCE. It is then built on top of it by `source_script`, in an image of its own keyed
by the content of all its files (layers.py): a changed source builds anew, an unchanged one
reuses its build.

System packages (ci.toml `system_packages`) are installed by `system_script`, in an image
under the environment, the only build that runs apt and needs its privileges.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ci_server.runner.project import EDITABLE_INSTALL, PIP, InstallPlan

ENSURE_PYTEST = f"{{ python -m pytest --version >/dev/null 2>&1 || {PIP} pytest; }}"
INSTALL_FAILED_EXIT = 100
"""The script's exit status when installing failed (pytest's own statuses are 0 to 5)."""
PROJECT_DIR = "/tmp/project"
OUTPUT_DIR = "/ci-output"
"""Mounted writable: pytest leaves its JUnit XML report here for the server to read."""
JUNIT_FILE = "junit.xml"
INSTALLED_PROJECT = "/opt/ci-project"
"""In an environment image: `generated/`, what the project's build wrote into its source
tree, and `installed`, there when the project is installed in the environment (it says
how, for the job's log)."""
BY_SOURCE = f"{INSTALLED_PROJECT}/by-source"
"""In an environment image: the project is not installed in it, but built from each source
on top of it (source_script)."""
DEFAULT_PYTEST_ARGS = ("-v", "-p", "no:cacheprovider", "-o", "junit_family=xunit1")


def _copy_source(*under: str) -> str:
    """Copy the source to PROJECT_DIR, over the trees `under` (copied first)."""
    copies = " && ".join(f"cp -R {tree}/. {PROJECT_DIR}" for tree in (*under, "/src"))
    return f"mkdir -p {PROJECT_DIR} && {copies} && cd {PROJECT_DIR} || exit 1"


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


def job_script(plan: InstallPlan, pytest_args: Sequence[str], *, with_dependencies: bool) -> str:
    """Copy the read-only source, install what is not in the image, run pytest.

    Without dependencies to install, the image is an environment: the project may be
    installed there already. The script's exit status is pytest's, or INSTALL_FAILED_EXIT.
    """
    dependencies = [*plan.dependency_commands, ENSURE_PYTEST] if with_dependencies else []
    pytest = shlex.join(
        [
            "python",
            "-m",
            "pytest",
            *DEFAULT_PYTEST_ARGS,
            f"--junitxml={OUTPUT_DIR}/{JUNIT_FILE}",
            *pytest_args,
        ]
    )
    install_project = _install_step(
        "Installing the project", [*plan.build_commands, *plan.project_commands]
    )
    if with_dependencies or not plan.project_commands:
        prepare = [
            _copy_source(),
            *_install_step(f"Installing dependencies ({plan.description})", dependencies),
            *install_project,
        ]
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
            *prepare,
            f"echo {shlex.quote('==> ' + pytest)}",
            f"exec {pytest}",
        ]
    )
