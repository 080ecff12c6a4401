"""Where `ci` finds its server and API key: an option, else the environment, else a file.

The file is TOML at `$XDG_CONFIG_HOME/ci/config.toml` (by default `~/.config/ci/config.toml`):

    api_key = "ci_..."                 # from `ci-admin key create`
    server = "http://ci.example:8000"  # optional

The key acts as you: keep the file private (`chmod 600`; `write_api_key` does).
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SERVER_URL = "http://127.0.0.1:8000"
API_KEY_LINE = re.compile(r"^\s*api_key\s*=.*$", re.MULTILINE)


class ConfigError(Exception):
    """The config file exists but cannot be used."""


@dataclass(frozen=True, slots=True)
class Connection:
    server: str
    api_key: str | None
    key_source: str | None
    """Where the key came from (`--api-key`, `CI_API_KEY` or the file), to say in errors."""


def config_path(env: Mapping[str, str] = os.environ) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ci" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The file's settings; none when it does not exist."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    for name in ("api_key", "server"):
        if name in data and not isinstance(data[name], str):
            raise ConfigError(f"{path}: `{name}` must be a string in double quotes")
    return {name: data[name] for name in ("api_key", "server") if name in data}


def resolve(
    server: str | None, api_key: str | None, env: Mapping[str, str] = os.environ
) -> Connection:
    """Each setting from the first place that has it: option, environment, config file."""
    path = config_path(env)
    config = read_config(path)
    key, source = next(
        (
            (value, where)
            for value, where in (
                (api_key, "--api-key"),
                (env.get("CI_API_KEY"), "CI_API_KEY"),
                (config.get("api_key"), str(path)),
            )
            if value
        ),
        (None, None),
    )
    url = server or env.get("CI_SERVER_URL") or config.get("server") or DEFAULT_SERVER_URL
    return Connection(server=url, api_key=key, key_source=source)


def write_api_key(key: str, path: Path | None = None) -> Path:
    """Put `api_key = "<key>"` in the config file, keeping its other lines; mode 0600."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f'api_key = "{key}"'
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    if API_KEY_LINE.search(text):
        text = API_KEY_LINE.sub(lambda _: line, text, count=1)
    else:
        text = f"{line}\n{text}"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(text)
    temporary.replace(path)  # atomic: a reader sees the old file or the new one
    return path
