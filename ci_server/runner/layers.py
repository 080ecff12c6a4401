"""The image a job runs in, made of up to three kept images, each built on the one before:

1. the system packages of ci.toml `system_packages`, on the runner image: the only build
   that runs apt, as root with the few capabilities apt needs, and no code of the project;
2. the environment: the dependencies, and the project installed editable when it can be
   (scripts.py), keyed by the files that decide them;
3. the project built from this very source, when its environment could not keep it
   (compiled extensions, no editable install): keyed by the content of all its files, so a
   changed source builds anew and an unchanged one reuses its build.

Each is an EnvironmentCache entry: built once, reused, evicted least recently used first;
without the cache (CI_ENV_CACHE=false) the environment and the build are made for the job
alone and discarded after it. Only these builds have the network: whatever a job installs
is installed here, and a job with nothing to install runs in its own image (or, if that
has no pytest, in an environment that installs it). The tests themselves always run
sandboxed (the job's user, no capabilities, no network unless CI_TEST_NETWORK).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Protocol

from ci_server.runner.config import ProjectConfig
from ci_server.runner.environments import EnvironmentCache, environment_key
from ci_server.runner.executor import Executor, RunSpec
from ci_server.runner.project import InstallPlan
from ci_server.runner.scripts import BY_SOURCE, environment_script, source_script, system_script

APT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "SETUID", "SETGID")
"""What apt and dpkg need as root in a container: dpkg sets files' owners and modes, apt
drops to its `_apt` user to download."""
WHOLE_SOURCE = (".",)
"""Key files meaning every file of the project."""


class BuildLog(Protocol):
    def system(self, text: str) -> None: ...

    def feed(self, chunk: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class JobImage:
    image: str
    installed: bool
    """Whether the image holds the dependencies (and the project, when it has a build)."""
    failure: str | None = None
    """Why a build failed (`installing dependencies failed`); None when all went well."""
    exit_code: int | None = None
    """The failed build's status."""
    discard: tuple[str, ...] = ()
    """Images made for this job alone, to discard after it (Layers.discard)."""
    environment: str = ""
    """What the image is made of: its last layer's key, or the id of the job's own image
    when nothing was built on it (runner/content.py)."""


@dataclass(frozen=True, slots=True)
class _Layer:
    """What the job's log says of one kept image ({key}, {seconds} filled in)."""

    built: str
    reused: str
    failed: str
    name: str = ""
    """Added to the job's id in its build container's name: one job may run three builds,
    and the engine removes each container after its build, in the background."""
    built_once: str = ""
    """Said when it is built for one job alone (without the cache)."""


class _BuildFailed(Exception):
    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code


SYSTEM = _Layer(
    "System packages {key} installed in {seconds:.1f}s and kept for the next runs: {names}",
    "System packages {key} reused: {names}",
    "installing system packages failed",
    "-system",
)
ENVIRONMENT = _Layer(
    "Environment {key} built in {seconds:.1f}s and kept for the next runs",
    "Environment {key} reused: dependencies already installed",
    "installing dependencies failed",
    built_once="Environment {key} built in {seconds:.1f}s for this job only (CI_ENV_CACHE=false)",
)
SOURCE_BUILD = _Layer(
    "Project {key} built from this source in {seconds:.1f}s and kept for its next runs",
    "Project {key} reused: this source is built already",
    "installing the project failed",
    "-source",
    built_once="Project {key} built from this source in {seconds:.1f}s for this job only "
    "(CI_ENV_CACHE=false)",
)


class Layers:
    def __init__(self, executor: Executor, cache: EnvironmentCache, *, reuse: bool) -> None:
        """`reuse`: keep the dependencies and the project in environments (CI_ENV_CACHE);
        system packages are kept in any case, since a job cannot install them itself."""
        self.executor = executor
        self.cache = cache
        self.reuse = reuse
        self._by_source: dict[str, bool] = {}
        """Whether an environment image leaves the project to a build of each source."""

    async def prepare(
        self,
        spec: RunSpec,
        plan: InstallPlan,
        config: ProjectConfig,
        log: BuildLog,
        *,
        rebuild: bool = False,
        pytest_missing: bool = False,
    ) -> JobImage:
        """The image to run the job `spec` in (built if need be), from the job's image up.
        `pytest_missing`: the job's image has no pytest, so even a plan with nothing to
        install needs an environment."""
        image = spec.image
        environment = ""
        discard: list[str] = []
        try:
            if config.system_packages:
                script = system_script(config.system_packages)
                image, environment = await self._ensure(
                    replace(spec, image=image, script=script, env={}),
                    SYSTEM,
                    log,
                    rebuild=rebuild,
                    capabilities=APT_CAPABILITIES,
                    names=" ".join(config.system_packages),
                )
            if not (plan.dependency_commands or plan.project_commands or pytest_missing):
                environment = environment or await self.executor.image_id(image)
                return JobImage(image, installed=False, environment=environment)
            build = replace(spec, image=image, script=environment_script(plan))
            image, environment = await self._ensure(
                build, ENVIRONMENT, log, rebuild=rebuild, key_files=plan.key_files, once=discard
            )
            if plan.project_commands and await self._builds_by_source(image):
                build = replace(spec, image=image, script=source_script(plan))
                image, environment = await self._ensure(
                    build, SOURCE_BUILD, log, rebuild=rebuild, key_files=WHOLE_SOURCE, once=discard
                )
        except _BuildFailed as e:
            return JobImage(image, False, e.reason, e.exit_code, tuple(discard))
        return JobImage(image, installed=True, discard=tuple(discard), environment=environment)

    async def discard(self, job_image: JobImage) -> None:
        """Remove the images made for the job alone."""
        for image in job_image.discard:
            self._by_source.pop(image, None)
            await self.cache.discard(image)

    async def _ensure(
        self,
        build: RunSpec,
        layer: _Layer,
        log: BuildLog,
        *,
        rebuild: bool,
        key_files: tuple[str, ...] = (),
        capabilities: tuple[str, ...] = (),
        names: str = "",
        once: list[str] | None = None,
    ) -> tuple[str, str]:
        """The image `build.script` makes on `build.image`, run as root (with the network)
        if it is not kept already, and its key; _BuildFailed if the build fails. Without
        the cache, a layer given `once` is built for this job alone, and its image added
        there."""
        base_id = await self.executor.image_id(build.image)
        key = await asyncio.to_thread(
            environment_key, base_id, build.script, build.workspace, key_files, build.env
        )
        as_root = replace(
            build,
            job_id=build.job_id + layer.name,
            output_dir=None,
            user="0:0",
            capabilities=capabilities,
            network=True,
        )
        alone = None if self.reuse else once
        if alone is not None:
            environment = await self.cache.build_once(key, as_root, log.feed)
            if environment.exit_code == 0:
                alone.append(environment.image)
        else:
            environment = await self.cache.ensure(
                key,
                as_root,
                log.feed,
                rebuild=rebuild,
                on_wait=lambda: log.system("Waiting for another job building this environment"),
            )
        if environment.exit_code != 0:
            raise _BuildFailed(layer.failed, environment.exit_code)
        if alone is not None:
            said = layer.built_once
        else:
            said = layer.built if environment.built else layer.reused
        log.system(said.format(key=key[:12], seconds=environment.build_seconds, names=names))
        if environment.built:
            self._by_source.pop(environment.image, None)  # a new image under a known tag
        return environment.image, key

    async def _builds_by_source(self, image: str) -> bool:
        if image not in self._by_source:
            self._by_source[image] = await self.executor.image_has_file(image, BY_SOURCE)
        return self._by_source[image]
