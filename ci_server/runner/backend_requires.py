"""Run in the container, in the project's folder: print what its build backend needs, beyond
its `[build-system] requires`, to build it in editable mode and as a wheel, one requirement
a line (PEP 660 and PEP 517 `get_requires_for_build_editable` / `_wheel`).

hatchling and pdm-backend need `editables` for an editable build and say so only when asked.
pip asks only in an isolated build, which an environment cannot use: a job that installs
its project on every run has no network, so the backend and all it needs must be in the
environment already. The hooks run in a subprocess through pip's own copy of
pyproject_hooks, quietly: the backend's chatter (setuptools prints every command it runs)
must not mix with the answer; it is shown only when a hook fails.

This file is not imported by the server: scripts.py sends its source to the container.
It uses nothing but the standard library and pip.
"""

import sys
from pathlib import Path

LEGACY_BACKEND = "setuptools.build_meta:__legacy__"
"""What pip uses for a project without [build-system] build-backend (PEP 517)."""


def main() -> int:
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        from pip._vendor import tomli as tomllib  # type: ignore[no-redef]
    from pip._vendor.pyproject_hooks import BuildBackendHookCaller, quiet_subprocess_runner

    try:
        with Path("pyproject.toml").open("rb") as file:
            build_system = tomllib.load(file).get("build-system", {})
    except FileNotFoundError:
        build_system = {}
    hooks = BuildBackendHookCaller(
        ".",
        build_system.get("build-backend", LEGACY_BACKEND),
        build_system.get("backend-path"),
        runner=quiet_subprocess_runner,
    )
    try:
        requires = [
            *hooks.get_requires_for_build_editable(),
            *hooks.get_requires_for_build_wheel(),
        ]
    except Exception as e:  # the backend's failure, whatever it is, goes to the log
        details = getattr(e, "output", None) or getattr(e, "traceback", None) or b""
        if isinstance(details, bytes):
            details = details.decode(errors="replace")
        sys.stderr.write(details)
        print(f"the build backend could not say what it needs: {e!r}", file=sys.stderr)
        return 1
    print("\n".join(dict.fromkeys(requires)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
