"""Which stores the settings choose: PostgreSQL at CI_DATABASE_URL, else SQLite at CI_DB_PATH;
uploads beside them (CI_BLOB_STORE)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ci_server.settings import Settings
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.blobs_postgres import PostgresBlobStore
from ci_server.store.factory import describe, open_blob_store, open_store, parse_database
from ci_server.store.postgres import PostgresStore
from ci_server.store.sqlite import SqliteStore

URL = "postgresql://ci:s3cret@db.example.com:5432/ci"


def test_sqlite_at_db_path_is_the_default(tmp_path: Path) -> None:
    store = open_store(Settings(db_path=tmp_path / "ci.db"))
    assert isinstance(store, SqliteStore)
    assert store.path == tmp_path / "ci.db"


def test_a_database_url_chooses_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI_DATABASE_URL", URL)
    store = open_store(Settings())
    assert isinstance(store, PostgresStore)
    assert store.url == URL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://ci@db/ci", "must start with postgresql://"),
        ("postgresql://ci@db:port/ci", "Port could not be cast"),
    ],
)
def test_a_url_that_is_no_postgresql_url_is_refused(url: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(database_url=url)


def test_the_instance_is_the_database_whatever_the_password() -> None:
    """Containers are labelled with it: a new password must not orphan them."""
    instance = Settings(database_url=URL).instance_id
    assert Settings(database_url=URL.replace("s3cret", "n3w")).instance_id == instance
    assert Settings(database_url=URL.removesuffix("/ci") + "/other").instance_id != instance
    assert Settings(db_path=Path("ci.db")).instance_id != instance


def test_a_typed_database_is_a_url_or_a_path() -> None:
    assert parse_database(URL) == URL
    assert parse_database("postgres://db/ci") == "postgres://db/ci"
    assert parse_database("data/ci.db") == Path("data/ci.db")
    assert describe(URL) == "postgresql://ci:***@db.example.com:5432/ci"
    assert describe(Path("data/ci.db")) == "data/ci.db"


def test_uploads_go_to_the_data_dir_with_sqlite_and_to_postgresql_with_a_url(
    tmp_path: Path,
) -> None:
    files = open_blob_store(Settings(db_path=tmp_path / "ci.db"))
    assert isinstance(files, FileBlobStore)
    assert files.directory == tmp_path / "ci.db.data" / "blobs"

    rows = open_blob_store(Settings(database_url=URL))
    assert isinstance(rows, PostgresBlobStore)
    assert rows.url == URL


def test_ci_blob_store_overrides_the_choice(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One host with PostgreSQL may keep uploads on its disk."""
    monkeypatch.setenv("CI_DATABASE_URL", URL)
    monkeypatch.setenv("CI_BLOB_STORE", "fs")
    monkeypatch.setenv("CI_DATA_DIR", str(tmp_path / "data"))
    store = open_blob_store(Settings())
    assert isinstance(store, FileBlobStore)
    assert store.directory == tmp_path / "data" / "blobs"


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"CI_BLOB_STORE": "postgres"}, "CI_BLOB_STORE=postgres needs CI_DATABASE_URL"),
        ({"CI_BLOB_STORE": "s3"}, "Input should be 'fs' or 'postgres'"),
    ],
)
def test_a_blob_store_that_cannot_be_is_refused(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], message: str
) -> None:
    monkeypatch.delenv("CI_DATABASE_URL", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()
