"""Packaging for the self-hosted CI service: the `ci` client and the `ci-server`."""

from setuptools import find_packages, setup

CLIENT = [
    "requests>=2.32",
    "requests-toolbelt>=1.0",
    "pathspec>=0.12",
    "zstandard>=0.23",
]
"""What `ci` imports (ci_client, ci_common): a plain `pip install .` brings these only;
tests/e2e/test_packaging.py installs that into a fresh virtual environment and runs `ci`."""
SERVER = [
    "fastapi>=0.115",
    "uvicorn>=0.30",
    "python-multipart>=0.0.9",
    "pydantic-settings>=2.4",
    "sse-starlette>=2.1",
    "aiosqlite>=0.20",
    "asyncpg>=0.29",
    "docker>=7.1",
    "defusedxml>=0.7",
    "poetry-core>=1.9",
    "jinja2>=3.1",
    "prometheus-client>=0.20",
]
"""`ci-server`, `ci-worker` and `ci-admin`: `pip install '.[server]'`."""
DEV = [
    "pytest>=8.3",
    "pytest-asyncio>=0.24",
    "pytest-timeout>=2.3",
    "httpx>=0.27",
    "schemathesis>=4.32,<5",
    "hypothesis>=6.100",
    "sseclient-py>=1.8",
    "ruff>=0.6",
    "pyright>=1.1.380",
    "asyncpg-stubs>=0.29",
    "playwright>=1.50",
]

setup(
    name="selfhosted-ci",
    version="0.1.0",
    description="Run a Python project's pytest suite in a clean Docker container, live.",
    python_requires=">=3.11",
    packages=find_packages(
        include=["ci_server", "ci_server.*", "ci_client", "ci_client.*", "ci_common"]
    ),
    package_data={"ci_server.web": ["templates/*.html", "static/*"]},
    install_requires=CLIENT,
    extras_require={"server": SERVER, "dev": SERVER + DEV},
    entry_points={
        "console_scripts": [
            "ci=ci_client.cli:main",
            # Through ci_server.commands: a clear message when the server extra is missing.
            "ci-server=ci_server.commands:server",
            "ci-admin=ci_server.commands:admin",
            "ci-worker=ci_server.commands:worker",
        ],
    },
)
