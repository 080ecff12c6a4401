"""End to end on PostgreSQL: a real `ci-server` with CI_DATABASE_URL, real Docker, the real
`ci` and `ci-admin`; everything the server keeps is in the database, none in a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import run_async
from tests.e2e.conftest import ServerFactory
from tests.e2e.harness import ServerProcess, run_ci
from tests.e2e.test_cli import (
    PASSING_TESTS,
    ProjectFactory,
    describe,
    last_line,
    outcome_pattern,
    passed_line,
    submit,
)


async def _fetch(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(url)
    try:
        return [dict(row.items()) for row in await connection.fetch(query, *args)]
    finally:
        await connection.close()


def fetch(url: str, query: str, *args: Any) -> list[dict[str, Any]]:
    return run_async(_fetch(url, query, *args))


@pytest.mark.docker
def test_a_server_on_postgresql_runs_a_job_and_keeps_it_there(
    make_server: ServerFactory, project: ProjectFactory, postgres_database: str, tmp_path: Path
) -> None:
    # The admin's key is made by the real `ci-admin`, which reads CI_DATABASE_URL too.
    server = make_server(CI_DATABASE_URL=postgres_database)
    run = submit(project("passing"), server, "--", "-v")  # a line per test, to replay

    assert run.result.returncode == 0, describe(run.result)
    for test in PASSING_TESTS:
        assert passed_line("tests/test_calc.py", test).search(run.result.stdout)
    [job] = fetch(postgres_database, "SELECT status, owner_id FROM jobs WHERE id = $1", run.job_id)
    [admin] = fetch(postgres_database, "SELECT id, is_admin FROM users")
    assert (job["status"], job["owner_id"]) == ("succeeded", admin["id"])
    assert admin["is_admin"] is True
    [key] = fetch(postgres_database, "SELECT user_id, last_used_at FROM api_keys")
    assert key["user_id"] == admin["id"]
    assert key["last_used_at"] is not None  # the server authenticated it there
    last = fetch(
        postgres_database,
        "SELECT type FROM events WHERE job_id = $1 ORDER BY seq DESC LIMIT 1",
        run.job_id,
    )
    assert last == [{"type": "end"}]
    results = fetch(
        postgres_database,
        "SELECT node_id, outcome FROM test_results WHERE job_id = $1 ORDER BY position",
        run.job_id,
    )
    assert results == [
        {"node_id": f"tests/test_calc.py::{test}", "outcome": "passed"} for test in PASSING_TESTS
    ]
    assert not Path(server.env["CI_DB_PATH"]).exists()  # no SQLite file beside

    # Another server process on the same database: the same key, the whole log.
    server.stop()
    restarted = ServerProcess(
        db_path=server.db_path, env=server.env, api_key=server.api_key
    ).start()
    try:
        replay = run_ci("wait", "--all", run.job_id, cwd=tmp_path, server=restarted)
    finally:
        restarted.stop()
    assert replay.returncode == 0, describe(replay)
    for test in PASSING_TESTS:
        assert passed_line("tests/test_calc.py", test).search(replay.stdout), describe(replay)
    assert outcome_pattern(run.job_id, "succeeded").match(last_line(replay.stderr)), describe(
        replay
    )
