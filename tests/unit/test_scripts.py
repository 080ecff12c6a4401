"""The job script's pytest command line."""

from __future__ import annotations

import shlex

import pytest

from ci_server.runner.project import InstallPlan
from ci_server.runner.scripts import job_script

NOTHING_TO_INSTALL = InstallPlan("nothing", (), (), ())


def pytest_command(pytest_args: list[str]) -> list[str]:
    """The arguments of the script's pytest run."""
    script = job_script(NOTHING_TO_INSTALL, pytest_args, environment=False)
    [line] = [line for line in script.splitlines() if line.startswith("python -m pytest")]
    return shlex.split(line)


def test_pytest_prints_colour_before_the_users_arguments() -> None:
    command = pytest_command(["-k", "one"])
    assert command.count("--color=yes") == 1
    assert command.index("--color=yes") < command.index("-k")


@pytest.mark.parametrize("chosen", [["--color=no"], ["--color", "auto"], ["-x", "--color=yes"]])
def test_the_users_own_colour_choice_is_the_only_one(chosen: list[str]) -> None:
    command = pytest_command(chosen)
    assert [arg for arg in command if arg.startswith("--color")] == [
        arg for arg in chosen if arg.startswith("--color")
    ]
    assert command[-len(chosen) :] == chosen
