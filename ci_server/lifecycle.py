"""What is opened before use and closed after, with `async with`: the stores."""

from __future__ import annotations

import abc
from types import TracebackType
from typing import Self


class Lifecycle(abc.ABC):
    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abc.abstractmethod
    async def open(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
