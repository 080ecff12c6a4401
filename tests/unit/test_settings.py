"""Settings come from CI_* variables; a wrong one is named, with why, never with its value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ci_server.settings import InvalidSettings, load_settings

SECRET_URL = "mysql://ci:hunter2@db.example/ci"


def test_settings_come_from_ci_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_MAX_CONCURRENT_JOBS", "3")
    assert load_settings().max_concurrent_jobs == 3


def test_options_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_WORKER_NAME", "from-env")
    assert load_settings(worker_name="from-option").worker_name == "from-option"


def test_each_wrong_variable_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_DATABASE_URL", SECRET_URL)
    monkeypatch.setenv("CI_MAX_CONCURRENT_JOBS", "many")
    with pytest.raises(InvalidSettings) as raised:
        load_settings()
    message = str(raised.value)
    assert "CI_DATABASE_URL: a database URL must start with postgresql://" in message
    assert "CI_MAX_CONCURRENT_JOBS: " in message
    assert "hunter2" not in message and "many" not in message


def test_a_rule_across_settings_is_said_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI_DATABASE_URL", raising=False)
    monkeypatch.setenv("CI_BLOB_STORE", "postgres")
    with pytest.raises(InvalidSettings, match=r"^CI_BLOB_STORE=postgres needs CI_DATABASE_URL$"):
        load_settings()


@pytest.mark.parametrize(
    ("module", "args"),
    [("ci_server", []), ("ci_server.worker", []), ("ci_server.admin", ["workers"])],
)
def test_every_command_refuses_a_bad_setting_with_a_usage_error(
    module: str, args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI_DATABASE_URL", SECRET_URL)
    done = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith(
        "error: CI_DATABASE_URL: a database URL must start with postgresql://"
    )
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
