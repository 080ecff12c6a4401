"""`ci-server` refuses to serve without authentication anywhere but on loopback."""

from __future__ import annotations

from typing import Any

import pytest

from ci_server import __main__ as server_main
from ci_server.__main__ import is_loopback
from ci_server.settings import Settings


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LocalHost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("128.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(("value", "auth"), [("off", False), ("false", False), ("on", True)])
def test_ci_auth_setting(monkeypatch: pytest.MonkeyPatch, value: str, auth: bool) -> None:
    monkeypatch.setenv("CI_AUTH", value)
    assert Settings().auth is auth
    monkeypatch.delenv("CI_AUTH")
    assert Settings().auth is True


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Calls of uvicorn.run, which is replaced: nothing is served."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(server_main.uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setenv("CI_AUTH", "off")
    return calls


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_auth_off_on_a_network_address_refuses_to_start(
    served: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], host: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        server_main.main(["--host", host])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "CI_AUTH=off" in error
    assert f"only on a loopback address (127.0.0.1, ::1, localhost), not --host {host}" in error
    assert "Traceback" not in error
    assert served == []


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_auth_off_on_loopback_starts(served: list[dict[str, Any]], host: str) -> None:
    server_main.main(["--host", host, "--port", "8123"])
    assert [(call["host"], call["port"]) for call in served] == [(host, 8123)]
