"""How a project is installed and tested: the shell script a job's container runs."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ci_server.models import CIError

INSTALL_FAILED_EXIT = 100
"""The script's exit status when installing dependencies failed (pytest uses 0 to 5)."""

PROJECT_DIR = "/tmp/project"
DEFAULT_PYTEST_ARGS = ("-v", "-p", "no:cacheprovider")


class ProjectError(CIError):
    """The project cannot be run as it is: the user must change it."""


@dataclass(frozen=True, slots=True)
class InstallPlan:
    description: str
    commands: tuple[str, ...]


def plan_install(workspace: Path) -> InstallPlan:
    if (workspace / "requirements.txt").is_file():
        return InstallPlan(
            "requirements.txt",
            ("python -m pip install --progress-bar off -r requirements.txt",),
        )
    raise ProjectError(
        "no requirements.txt in the project root: list the project's test dependencies "
        "there (one per line, `pytest` at least)"
    )


def container_script(plan: InstallPlan, pytest_args: Sequence[str]) -> str:
    """The script: copy the read-only source, install, run pytest; its status is pytest's."""
    install = " && ".join(plan.commands)
    pytest = shlex.join(["python", "-m", "pytest", *DEFAULT_PYTEST_ARGS, *pytest_args])
    return "\n".join(
        [
            "set -u",
            f"mkdir -p {PROJECT_DIR} && cp -R /src/. {PROJECT_DIR} && cd {PROJECT_DIR} || exit 1",
            f"echo '==> Installing dependencies ({plan.description})'",
            f"{{ {install}; }} || {{ echo '==> Installing dependencies failed'; "
            f"exit {INSTALL_FAILED_EXIT}; }}",
            "python -m pytest --version >/dev/null 2>&1 || "
            "python -m pip install --progress-bar off pytest",
            f"echo {shlex.quote('==> ' + pytest)}",
            f"exec {pytest}",
        ]
    )
