"""Test doubles and helpers shared by the unit and integration tests.

FakeExecutor stands in for Docker: it plays a scripted run (output chunks, an optional wait
on an asyncio.Event, an exit code or an error, a report), keeps environment images in a
dict (running one it has not is ImageMissing) and records what the scheduler asked of it.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import time
import zipfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from ci_server.runner.environments import IMAGE_REPOSITORY
from ci_server.runner.executor import (
    COLLECTED_NAME,
    ImageInfo,
    ImageMissing,
    OutputSink,
    RunSpec,
)
from ci_server.runner.scripts import JUNIT_FILE

PASSING_PROJECT: Mapping[str, str] = {
    "requirements.txt": "pytest\n",
    "test_sample.py": "def test_ok():\n    assert 1 + 1 == 2\n",
}


def write_zip(path: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write a deflated zip of `files` (archive name -> content) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return path


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    what: str,
    within: float = 10.0,
    interval: float = 0.01,
) -> None:
    """Poll `condition` until it holds; fail the test after `within` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


def _files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@dataclass(frozen=True)
class FakeRun:
    """What one fake run does: emit `output`, wait for `gate` if any, then exit or raise;
    a test run leaves `report` as its JUnit report, and a shard's (given inputs) `collected`
    as what it collected (shard_plugin.py writes it)."""

    output: Sequence[bytes] = (b"test_sample.py::test_ok PASSED\n",)
    exit_code: int = 0
    gate: asyncio.Event | None = None
    error: Exception | None = None
    report: str | None = None
    collected: str | None = json.dumps({"tests": 1, "sha256": "0" * 64})


@dataclass(frozen=True)
class FakeBuild:
    spec: RunSpec
    tag: str
    labels: Mapping[str, str]


@dataclass
class FakeExecutor:
    """An Executor that runs nothing. `plan` (test runs) and `build_plan` (environment
    builds) are read when each run starts; images are kept in a dict."""

    plan: FakeRun = field(default_factory=FakeRun)
    image_plans: dict[str, FakeRun] = field(default_factory=dict)
    """Test runs in these images play these instead of `plan`."""
    build_plan: FakeRun = field(
        default_factory=lambda: FakeRun(output=(b"Successfully installed pytest\n",))
    )
    orphans: int = 0
    specs: list[RunSpec] = field(default_factory=list)
    builds: list[FakeBuild] = field(default_factory=list)
    images: dict[str, ImageInfo] = field(default_factory=dict)
    built_files: set[str] = field(default_factory=set)
    """Files every image it builds has, as `image_has_file` says."""
    files_seen: dict[str, dict[str, bytes]] = field(default_factory=dict)
    inputs_seen: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """What the container would see at INPUT_DIR, for jobs given inputs."""
    running: set[str] = field(default_factory=set)
    max_running: int = 0
    cancelled: list[str] = field(default_factory=list)
    remove_orphans_calls: int = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def run(self, spec: RunSpec, on_output: OutputSink) -> int:
        if spec.image.startswith(f"{IMAGE_REPOSITORY}:") and spec.image not in self.images:
            raise ImageMissing(f"image {spec.image!r} not found", spec.image)
        self.specs.append(spec)
        # What the container would see at /src (the workspace is removed after the job).
        self.files_seen[spec.job_id] = _files_under(spec.workspace)
        if spec.inputs is not None:
            self.inputs_seen[spec.job_id] = _files_under(spec.inputs)
        plan = self.image_plans.get(spec.image, self.plan)
        if plan.report is not None and spec.output_dir is not None:
            (spec.output_dir / JUNIT_FILE).write_text(plan.report)
        if plan.collected is not None and spec.inputs is not None and spec.output_dir is not None:
            (spec.output_dir / COLLECTED_NAME).write_text(plan.collected)
        return await self._play(spec, plan, on_output)

    async def build_image(
        self, spec: RunSpec, tag: str, labels: Mapping[str, str], on_output: OutputSink
    ) -> int:
        self.builds.append(FakeBuild(spec, tag, dict(labels)))
        status = await self._play(spec, self.build_plan, on_output)
        if status == 0:
            self.images[tag] = ImageInfo(tag, time.time())
        return status

    async def _play(self, spec: RunSpec, plan: FakeRun, on_output: OutputSink) -> int:
        self.running.add(spec.job_id)
        self.max_running = max(self.max_running, len(self.running))
        try:
            if plan.error is not None:
                raise plan.error
            for chunk in plan.output:
                on_output(chunk)
            if plan.gate is not None:
                await plan.gate.wait()
            return plan.exit_code
        except asyncio.CancelledError:
            self.cancelled.append(spec.job_id)
            raise
        finally:
            self.running.discard(spec.job_id)

    async def remove_orphans(self) -> int:
        self.remove_orphans_calls += 1
        return self.orphans

    async def image_id(self, image: str) -> str:
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest()

    async def environment_images(self) -> list[ImageInfo]:
        return list(self.images.values())

    async def remove_image(self, tag: str) -> None:
        self.images.pop(tag, None)

    async def image_has_file(self, image: str, path: str) -> bool:
        return image in self.images and path in self.built_files
