"""`ci.toml`: what a project may say about how it is tested. Optional; every key is optional.

    image = "ci-runner:bookworm"       # one of the server's allowed runner images
    system_packages = ["libpq-dev"]    # Debian packages, installed with apt before anything else
    install = ["make -C native"]       # shell commands run after the dependencies install
    pytest_args = ["-x", "tests/unit"] # before any given on the command line
    project = "shop"                   # the project's name (naming.py), if not its package's
    python = ["3.11", "3.13"]          # a job per version (the server's CI_PYTHON_IMAGES)
    shards = 4                         # the suite split over this many jobs (per version)
    artifacts = ["htmlcov/**", "reports/*.xml"]  # files the tests write, kept with the job
    [env]                              # environment variables for the install and the tests
    DJANGO_SETTINGS_MODULE = "site.settings"

Unknown keys and wrong types are refused with a message naming them, and so is anything
in `system_packages` that is not a Debian package name: those names reach apt's command line
in a build with root's privileges.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ci_server.models import CIError
from ci_server.runner.shapes import MAX_FILE_BYTES, Table, read_toml
from ci_server.runner.workspace import unpack_files

CONFIG_FILE = "ci.toml"
KNOWN_KEYS = (
    "image",
    "system_packages",
    "install",
    "pytest_args",
    "env",
    "project",
    "python",
    "shards",
    "artifacts",
)
MAX_ARTIFACT_PATTERNS = 100
MAX_PATTERN_CHARS = 300
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
    project: str | None = None
    python: tuple[str, ...] = ()
    """The Python versions to run the suite under, a job each (groups.py); none: one job
    in the server's default image."""
    shards: int | None = None
    """How many jobs (per Python version) the suite is split over; None: one."""
    artifacts: tuple[str, ...] = ()
    """Patterns of the files the tests write in the project's copy that the job keeps
    (runner/collect_artifacts.py matches them): relative, `/`-separated, `*`, `?`, `**`."""


def _strings(data: Table, key: str) -> tuple[str, ...]:
    return tuple(data.strings(key) or ())


def _system_packages(data: Table) -> tuple[str, ...]:
    packages = _strings(data, "system_packages")
    for package in packages:
        if not DEBIAN_PACKAGE_NAME.fullmatch(package):
            raise ConfigError(
                f"{CONFIG_FILE}: `system_packages`: {package!r} is not a Debian package name "
                "(lowercase letters, digits, '+', '-' and '.', at least two characters, "
                "starting with a letter or a digit)"
            )
    return tuple(sorted(set(packages)))


def _shards(data: Table) -> int | None:
    shards = data.integer("shards")
    if shards is not None and shards < 1:
        raise ConfigError(f"{CONFIG_FILE}: `shards` must be 1 or more, not {shards}")
    return shards


def _pattern_problem(pattern: str) -> str | None:
    """What makes an `artifacts` pattern unusable, if anything."""
    if not pattern:
        return "is empty"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is longer than {MAX_PATTERN_CHARS} characters"
    if pattern.startswith("/"):
        return "is not relative to the project"
    if ".." in pattern.split("/"):
        return "goes out of the project (`..`)"
    if "\\" in pattern or any(ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        return "has a backslash or a control character"
    return None


def _artifact_patterns(data: Table) -> tuple[str, ...]:
    patterns = _strings(data, "artifacts")
    if len(patterns) > MAX_ARTIFACT_PATTERNS:
        raise ConfigError(f"{CONFIG_FILE}: `artifacts`: at most {MAX_ARTIFACT_PATTERNS} patterns")
    for pattern in patterns:
        if (why := _pattern_problem(pattern)) is not None:
            raise ConfigError(f"{CONFIG_FILE}: `artifacts`: {pattern!r} {why}")
    return tuple(dict.fromkeys(patterns))


def load_config(root: Path) -> ProjectConfig:
    if not (root / CONFIG_FILE).is_file():
        return ProjectConfig()
    data = Table(read_toml(root, CONFIG_FILE, error=ConfigError), CONFIG_FILE, error=ConfigError)
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(
            f"{CONFIG_FILE}: unknown key(s) {', '.join(unknown)} "
            f"(known keys: {', '.join(KNOWN_KEYS)})"
        )
    env = data.table("env")
    return ProjectConfig(
        image=data.string("image"),
        system_packages=_system_packages(data),
        install=_strings(data, "install"),
        pytest_args=_strings(data, "pytest_args"),
        env={name: value for name in env if (value := env.string(name)) is not None},
        project=data.string("project"),
        python=_strings(data, "python"),
        shards=_shards(data),
        artifacts=_artifact_patterns(data),
    )


def upload_config(upload: Path, scratch: Path) -> ProjectConfig:
    """The ci.toml of a checked upload, read when it is submitted (its `python` and
    `shards` make a group of jobs), unpacked into a folder under `scratch`. One that cannot
    be read reads as none here: the job's run says what is wrong with it."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix="config-") as folder:
        root = Path(folder)
        unpack_files(upload, root, (CONFIG_FILE,), MAX_FILE_BYTES)
        return config_or_empty(root)


def config_or_empty(root: Path) -> ProjectConfig:
    """The ci.toml under `root`, or none when it cannot be read: the job's run says what is
    wrong with it."""
    try:
        return load_config(root)
    except (CIError, OSError):
        return ProjectConfig()
