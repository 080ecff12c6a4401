"""The shell scripts a container runs: an environment's build, and a job.

An environment installs the project too, in editable mode, pointing at PROJECT_DIR, where
every job copies its source: its jobs install nothing (as tox's `usedevelop` reinstalls
only when the packaging files change, which here make a new environment). Files the
project's build wrote into its source tree (a generated `_version.py`) are kept in the
environment and copied under each job's source. A project that cannot be installed
editable, or whose build compiles extensions (they would go stale), is installed on every
run instead.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ci_server.runner.project import PIP, InstallPlan

ENSURE_PYTEST = f"{{ python -m pytest --version >/dev/null 2>&1 || {PIP} pytest; }}"
INSTALL_FAILED_EXIT = 100
"""The script's exit status when installing failed (pytest's own statuses are 0 to 5)."""
PROJECT_DIR = "/tmp/project"
OUTPUT_DIR = "/ci-output"
"""Mounted writable: pytest leaves its JUnit XML report here for the server to read."""
JUNIT_FILE = "junit.xml"
INSTALLED_PROJECT = "/opt/ci-project"
"""In an environment image: `generated/`, what the project's build wrote into its source
tree, and `installed`, there when the project is installed in the environment."""
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


def environment_script(plan: InstallPlan) -> str:
    """Install the dependencies (as root, into the image's system Python) to keep them, then
    the project in editable mode when it allows (see the module's docstring).

    The jobs' environment has PIP_USER set for their unprivileged user. Here, as root, it
    would put the dependencies in the user site under $HOME and leave $HOME owned by root,
    where the job's user could then install nothing, not even the project's own code. pip's
    cache would only make the image bigger.
    """
    return "\n".join(
        [
            "set -u",
            "export PIP_USER=0 PIP_NO_CACHE_DIR=1",
            _copy_source(),
            *_install_step(
                f"Installing dependencies ({plan.description})",
                [*plan.dependency_commands, ENSURE_PYTEST],
            ),
            *(_keep_project_installed() if plan.project_commands else []),
            f"cd / && rm -rf {PROJECT_DIR}",
        ]
    )


def _keep_project_installed() -> list[str]:
    generated, installed = f"{INSTALLED_PROJECT}/generated", f"{INSTALLED_PROJECT}/installed"
    every_run = "it will be installed on every run"
    keep = f'cp -p "$f" "{generated}/$f"'
    return [
        f"echo {shlex.quote('==> Installing the project in editable mode')}",
        f"if {PIP} --quiet --no-deps --no-build-isolation -e .; then",
        f"  mkdir -p {generated}",
        # build/ and dist/: what a regular install copied or packed, not the source tree's.
        "  find . \\( -path ./build -o -path ./dist \\) -prune -o -type f -print "
        "| while IFS= read -r f; do",
        f'    [ -e "/src/$f" ] || {{ mkdir -p "{generated}/${{f%/*}}" && {keep}; }}',
        "  done",
        f"  if [ -n \"$(find {generated} -name '*.so' -o -name '*.pyd')\" ]; then",
        f"    echo {shlex.quote(f'==> It has compiled extensions: {every_run}')}",
        "    python -m pip list --editable --format=freeze | sed 's/==.*//' "
        "| xargs -r python -m pip uninstall --yes --quiet",
        f"    rm -rf {INSTALLED_PROJECT}",
        "  else",
        f"    touch {installed}",
        "  fi",
        "else",
        f"  echo {shlex.quote(f'==> It cannot be installed in editable mode: {every_run}')}",
        "fi",
    ]


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
    install_project = _install_step("Installing the project", plan.project_commands)
    if with_dependencies or not plan.project_commands:
        prepare = [
            _copy_source(),
            *_install_step(f"Installing dependencies ({plan.description})", dependencies),
            *install_project,
        ]
    else:
        installed = "==> The project is installed in the environment (editable)"
        prepare = [
            f"if [ -e {INSTALLED_PROJECT}/installed ]; then",
            f"  {_copy_source(f'{INSTALLED_PROJECT}/generated')}",
            f"  echo {shlex.quote(installed)}",
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
