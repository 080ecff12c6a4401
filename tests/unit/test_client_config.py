"""Where `ci` takes its server and API key from, and how the config file is written."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ci_client.config import (
    DEFAULT_SERVER_URL,
    ConfigError,
    config_path,
    read_config,
    resolve,
    write_api_key,
)

FILE_KEY = "ci_0a1b2c3d4e5f_from-the-file"
ENV_KEY = "ci_0a1b2c3d4e5f_from-the-env"
OPTION_KEY = "ci_0a1b2c3d4e5f_from-the-option"


@pytest.fixture
def config_home(tmp_path: Path) -> Path:
    return tmp_path / "xdg"


def write_config(config_home: Path, text: str) -> Path:
    path = config_home / "ci" / "config.toml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_the_file_is_under_xdg_config_home_else_home(
    config_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config_path({"XDG_CONFIG_HOME": str(config_home)}) == config_home / "ci/config.toml"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_path({}) == tmp_path / "home/.config/ci/config.toml"
    assert config_path({"XDG_CONFIG_HOME": ""}) == tmp_path / "home/.config/ci/config.toml"


def test_an_option_wins_then_the_environment_then_the_file(config_home: Path) -> None:
    path = write_config(config_home, f'api_key = "{FILE_KEY}"\nserver = "http://from-the-file:1"\n')
    env = {"XDG_CONFIG_HOME": str(config_home)}
    from_file = resolve(None, None, env)
    assert (from_file.server, from_file.api_key, from_file.key_source) == (
        "http://from-the-file:1",
        FILE_KEY,
        str(path),
    )
    env |= {"CI_API_KEY": ENV_KEY, "CI_SERVER_URL": "http://from-the-env:2"}
    from_env = resolve(None, None, env)
    assert (from_env.server, from_env.api_key, from_env.key_source) == (
        "http://from-the-env:2",
        ENV_KEY,
        "CI_API_KEY",
    )
    given = resolve("http://option:3", OPTION_KEY, env)
    assert (given.server, given.api_key, given.key_source) == (
        "http://option:3",
        OPTION_KEY,
        "--api-key",
    )


def test_nothing_anywhere_means_no_key_and_the_default_server(config_home: Path) -> None:
    connection = resolve(None, None, {"XDG_CONFIG_HOME": str(config_home), "CI_API_KEY": ""})
    assert (connection.server, connection.api_key, connection.key_source) == (
        DEFAULT_SERVER_URL,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api_key = ci_unquoted\n", "cannot read"),
        ("api_key = 12\n", "`api_key` must be a string"),
        ('server = ["http://x"]\n', "`server` must be a string"),
    ],
)
def test_a_broken_file_is_a_clear_error(config_home: Path, text: str, message: str) -> None:
    path = write_config(config_home, text)
    with pytest.raises(ConfigError, match=message) as raised:
        read_config(path)
    assert str(path) in str(raised.value)


def test_writing_the_key_keeps_the_file_private_and_its_other_lines(config_home: Path) -> None:
    path = config_home / "ci" / "config.toml"
    assert write_api_key("ci_0a1b2c3d4e5f_first", path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_config(path) == {"api_key": "ci_0a1b2c3d4e5f_first"}

    path.write_text('# my settings\nserver = "http://ci:8000"\napi_key = "old"\n')
    path.chmod(0o644)
    write_api_key("ci_0a1b2c3d4e5f_second", path)
    assert path.read_text() == (
        '# my settings\nserver = "http://ci:8000"\napi_key = "ci_0a1b2c3d4e5f_second"\n'
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left
