"""Reading a project's configuration files, whose shapes are untrusted.

An upload may hold anything under a known name: `project = 3` in pyproject.toml, a binary
setup.cfg, a TOML file nesting arrays ten thousand deep, a requirements file of a gigabyte.
Whatever the server reads to plan a job comes through here, so that a file of the wrong
shape is the project's mistake (`ProjectError`, or ci.toml's `ConfigError`: the job fails
with a reason naming the file and the key), never a crash of the server's code (a job in
`error`).

Two policies, each in one place:

- `Table`: the tables a standard defines (PEP 621 `[project]`, PEP 517 `[build-system]`,
  PEP 735 `[dependency-groups]`) and ci.toml. A value of another type is refused, as pip
  or the server itself would refuse it: `pyproject.toml: [project] must be a table, not
  an integer`.
- `table_or_empty`, `plain_strings`: other tools' settings (`[tool.poetry]`, `[tool.tox]`,
  pytest's). A value of another type reads as absent: that tool says what is wrong with it.
"""

from __future__ import annotations

import datetime
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ci_server.models import CIError

MAX_FILE_BYTES = 4 * 1024**2
"""The largest configuration file read (pyproject.toml, setup.cfg, tox.ini, a requirements
file, ...): a thousand times a big real one, and small enough to parse in a second."""


class ProjectError(CIError):
    """The project cannot be run as it is: the user must change it."""


def read_text(root: Path, name: str, *, error: type[CIError] = ProjectError) -> str:
    """The project's file `name` (a path relative to `root`) as text: UTF-8, undecodable
    bytes replaced (TOML files are decoded strictly by `read_toml`). A file larger than
    MAX_FILE_BYTES is refused."""
    return _read_bytes(root, name, error).decode("utf-8", errors="replace")


def read_toml(root: Path, name: str, *, error: type[CIError] = ProjectError) -> dict[str, Any]:
    """The project's TOML file `name`, parsed."""
    data = _read_bytes(root, name, error)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise error(f"{name} is not valid TOML: {e}") from e
    except RecursionError as e:  # tomllib parses nested arrays and tables recursively
        raise error(f"{name} is not valid TOML: its arrays or tables nest too deep") from e


def _read_bytes(root: Path, name: str, error: type[CIError]) -> bytes:
    with (root / name).open("rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise error(f"{name} is larger than {MAX_FILE_BYTES:,} bytes: not read")
    return data


def exists(path: Path) -> bool:
    """Whether `path` exists. A name the system cannot even look up (longer than it
    allows: `-r aaa...a` in a requirements file) does not."""
    try:
        path.stat()
    except (OSError, ValueError):
        return False
    return True


def kind(value: Any) -> str:
    """What a TOML value is, in TOML's words: `an integer`, `an array`, `a table`."""
    for types, name in (
        (bool, "a boolean"),  # before int: a bool is an int to Python
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list, "an array"),
        (dict, "a table"),
        ((datetime.date, datetime.time), "a date or time"),
    ):
        if isinstance(value, types):
            return name
    return type(value).__name__


@dataclass(frozen=True, slots=True)
class Table:
    """A table of a TOML file, read key by key with the type each key must have.

    Absent keys read as absent (None, or an empty table); a value of another type raises
    `error` naming the file, the table and the key.
    """

    data: Mapping[str, Any]
    file: str
    """The file, as the messages name it: `pyproject.toml`."""
    name: str = ""
    """The table's dotted name (`project.optional-dependencies`); "" for the file's top."""
    error: type[CIError] = ProjectError

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def table(self, key: str) -> Table:
        """The table under `key`; an empty one when it is absent."""
        value = self.data.get(key, {})
        name = f"{self.name}.{key}" if self.name else key
        if not isinstance(value, dict):
            raise self.error(f"{self.file}: [{name}] must be a table, not {kind(value)}")
        return Table(value, self.file, name, self.error)

    def string(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            self._refuse(key, "a string", kind(value))
        return value

    def integer(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            self._refuse(key, "an integer", kind(value))
        return value

    def array(self, key: str) -> list[Any] | None:
        """The array under `key`, of values of any type."""
        value = self.data.get(key)
        if value is not None and not isinstance(value, list):
            self._refuse(key, "an array", kind(value))
        return value

    def strings(self, key: str) -> list[str] | None:
        """The array of strings under `key`."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self._refuse(key, "an array of strings", kind(value))
        for item in value:
            if not isinstance(item, str):
                self._refuse(key, "an array of strings", f"an array holding {kind(item)}")
        return value

    def where(self, key: str) -> str:
        """How messages name `key`: `[project] dependencies`, or `image` at the top."""
        return f"[{self.name}] {key}" if self.name else key

    def _refuse(self, key: str, wanted: str, found: str) -> NoReturn:
        raise self.error(f"{self.file}: {self.where(key)} must be {wanted}, not {found}")


def table_or_empty(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`data[key]` when it is a table; an empty one when it is absent, or no table."""
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def plain_strings(value: Any) -> list[str]:
    """The strings of an array (other items aside); none when `value` is no array."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []
