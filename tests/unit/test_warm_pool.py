"""WarmPool's bookkeeping, with containers stood in for by strings."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ci_server.runner.executor import RunSpec
from ci_server.runner.warm import Profile, WarmPool


def profile(image: str, **env: str) -> Profile:
    return Profile.of(RunSpec(job_id="j", image=image, script="true", workspace=Path(), env=env))


class Maker:
    """Makes "<image>#<n>" items; `gate` holds every make until set; `fail` makes them raise."""

    def __init__(self) -> None:
        self.made: list[str] = []
        self.discarded: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False
        self.fail_discards = False

    async def make(self, profile: Profile) -> str:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("engine down")
        item = f"{profile.image}#{len(self.made)}"
        self.made.append(item)
        return item

    async def discard(self, item: str) -> None:
        if self.fail_discards:
            raise RuntimeError("engine down")
        self.discarded.append(item)


async def settled(pool: WarmPool[str]) -> None:
    """Let the pool's background makes finish."""
    await pool.drop(lambda profile, item: False)


@pytest.fixture
def maker() -> Maker:
    return Maker()


async def test_a_replenished_profile_is_taken_once(maker: Maker) -> None:
    pool = WarmPool(2, maker.make, maker.discard)
    assert pool.take(profile("a")) is None
    pool.replenish(profile("a"))
    await settled(pool)
    assert pool.take(profile("a", X="1")) is None  # other settings: not this container
    assert pool.take(profile("a")) == "a#0"
    assert pool.take(profile("a")) is None
    await pool.aclose()


async def test_one_waits_or_is_being_made_per_profile(maker: Maker) -> None:
    pool = WarmPool(2, maker.make, maker.discard)
    maker.gate.clear()
    for _ in range(3):
        pool.replenish(profile("a"))
    maker.gate.set()
    await settled(pool)
    pool.replenish(profile("a"))
    await settled(pool)
    assert maker.made == ["a#0"]
    assert pool.idle() == ["a#0"]
    await pool.aclose()


async def test_past_its_size_the_least_recently_wanted_goes(maker: Maker) -> None:
    pool = WarmPool(2, maker.make, maker.discard)
    for image in ("a", "b", "c"):
        pool.replenish(profile(image))
        await settled(pool)
    assert pool.idle() == ["b#1", "c#2"]
    assert maker.discarded == ["a#0"]
    await pool.aclose()


async def test_size_zero_makes_nothing(maker: Maker) -> None:
    pool = WarmPool(0, maker.make, maker.discard)
    pool.replenish(profile("a"))
    await settled(pool)
    assert maker.made == []
    assert pool.take(profile("a")) is None


async def test_a_failed_make_leaves_nothing_and_the_next_replenish_tries_again(
    maker: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WarmPool(2, maker.make, maker.discard)
    maker.fail = True
    pool.replenish(profile("a"))
    await settled(pool)
    assert pool.idle() == []
    assert "engine down" in caplog.text
    maker.fail = False
    pool.replenish(profile("a"))
    await settled(pool)
    assert pool.idle() == ["a#0"]
    await pool.aclose()


async def test_drop_waits_for_the_ones_being_made_and_discards_what_it_picks(
    maker: Maker,
) -> None:
    pool = WarmPool(3, maker.make, maker.discard)
    pool.replenish(profile("a"))
    pool.replenish(profile("c"))
    await settled(pool)
    maker.gate.clear()
    pool.replenish(profile("b"))  # still being made when the drop starts
    drop = asyncio.ensure_future(pool.drop(lambda p, item: p.image == "b" or item == "a#0"))
    maker.gate.set()
    await drop
    assert sorted(maker.discarded) == ["a#0", "b#2"]
    assert pool.idle() == ["c#1"]
    await pool.aclose()


async def test_closing_discards_every_idle_one_and_makes_no_more(maker: Maker) -> None:
    pool = WarmPool(2, maker.make, maker.discard)
    pool.replenish(profile("a"))
    pool.replenish(profile("b"))
    await pool.aclose()
    assert sorted(maker.discarded) == ["a#0", "b#1"]
    pool.replenish(profile("a"))
    await settled(pool)
    assert len(maker.made) == 2
    assert pool.take(profile("a")) is None


async def test_a_failed_discard_is_logged_and_the_rest_still_goes(
    maker: Maker, caplog: pytest.LogCaptureFixture
) -> None:
    pool = WarmPool(1, maker.make, maker.discard)
    pool.replenish(profile("a"))
    await settled(pool)
    maker.fail_discards = True
    pool.replenish(profile("b"))  # pushes "a" out, which cannot be removed
    await settled(pool)
    await pool.aclose()  # neither can "b": closing still ends
    assert pool.idle() == []
    assert caplog.text.count("could not remove a waiting container: engine down") == 2
