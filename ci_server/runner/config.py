"""`ci.toml`: what a project may say about how it is tested. Optional; every key is optional.

    image = "ci-runner:bookworm"       # one of the server's allowed runner images
    system_packages = ["libpq-dev"]    # Debian packages, installed with apt before anything else
    install = ["make -C native"]       # shell commands run after the dependencies install
    pytest_args = ["-x", "tests/unit"] # before any given on the command line
    [env]                              # environment variables for the install and the tests
    DJANGO_SETTINGS_MODULE = "site.settings"

Unknown keys and wrong types are refused with a message naming them, and so is anything
in `system_packages` that is not a Debian package name: those names reach apt's command line
in a build with root's privileges.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ci_server.models import CIError

CONFIG_FILE = "ci.toml"
KNOWN_KEYS = ("image", "system_packages", "install", "pytest_args", "env")
DEBIAN_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")
"""Debian policy 5.6.1: lowercase letters, digits, `+`, `-` and `.`, at least two
characters, starting with a letter or a digit."""


class ConfigError(CIError):
    """The project's ci.toml is invalid: the user must change it."""


@dataclass(frozen=True, slots=True)
class ProjectConfig:
    image: str | None = None
    system_packages: tuple[str, ...] = ()
    install: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def _string_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{CONFIG_FILE}: `{key}` must be a list of strings")
    return tuple(value)


def _system_packages(data: Mapping[str, Any]) -> tuple[str, ...]:
    packages = _string_list(data, "system_packages")
    for package in packages:
        if not DEBIAN_PACKAGE_NAME.fullmatch(package):
            raise ConfigError(
                f"{CONFIG_FILE}: `system_packages`: {package!r} is not a Debian package name "
                "(lowercase letters, digits, '+', '-' and '.', at least two characters, "
                "starting with a letter or a digit)"
            )
    return tuple(sorted(set(packages)))


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
        system_packages=_system_packages(data),
        install=_string_list(data, "install"),
        pytest_args=_string_list(data, "pytest_args"),
        env=dict(env),
    )
