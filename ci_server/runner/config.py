"""`ci.toml`: what a project may say about how it is tested. Optional; every key is optional.

    image = "ci-runner:bookworm"       # one of the server's allowed runner images
    install = ["apt-get --version"]    # shell commands run after the dependencies install
    pytest_args = ["-x", "tests/unit"] # before any given on the command line
    [env]                              # environment variables for the install and the tests
    DJANGO_SETTINGS_MODULE = "site.settings"

Unknown keys and wrong types are refused with a message naming them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_server.models import CIError

CONFIG_FILE = "ci.toml"
KNOWN_KEYS = ("image", "install", "pytest_args", "env")


class ConfigError(CIError):
    """The project's ci.toml is invalid: the user must change it."""


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    image: str | None = None
    install: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def _string_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{CONFIG_FILE}: `{key}` must be a list of strings")
    return tuple(value)


def load_config(root: Path) -> ProjectConfig:
    path = root / CONFIG_FILE
    if not path.is_file():
        return ProjectConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{CONFIG_FILE} is not valid TOML: {e}") from e
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(
            f"{CONFIG_FILE}: unknown key(s) {', '.join(unknown)} "
            f"(known keys: {', '.join(KNOWN_KEYS)})"
        )
    image = data.get("image")
    if image is not None and not isinstance(image, str):
        raise ConfigError(f"{CONFIG_FILE}: `image` must be a string")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ConfigError(f"{CONFIG_FILE}: `[env]` must map names to string values")
    return ProjectConfig(
        image=image,
        install=_string_list(data, "install"),
        pytest_args=_string_list(data, "pytest_args"),
        env=dict(env),
    )
