"""Which store a database setting names: a postgresql:// URL (a str) or an SQLite file."""

from __future__ import annotations

from pathlib import Path

from ci_server.settings import POSTGRES_SCHEMES, Settings, check_postgres_url
from ci_server.store.blobs import BlobStore
from ci_server.store.blobs_fs import FileBlobStore
from ci_server.store.blobs_postgres import PostgresBlobStore
from ci_server.store.postgres import PostgresStore, redacted
from ci_server.store.repository import Store
from ci_server.store.sqlite import SqliteStore

Database = str | Path
"""A PostgreSQL URL (str) or an SQLite file (Path)."""


def parse_database(value: str) -> Database:
    """What a user typed: a postgresql:// URL stays a URL (ValueError if it cannot be one),
    anything else is a file's path."""
    return check_postgres_url(value) if value.startswith(POSTGRES_SCHEMES) else Path(value)


def store_at(database: Database, *, listen: bool = True) -> Store:
    """The store of the database, not yet open; `listen`: whether a PostgreSQL store hears
    other processes' signals (else it polls)."""
    if isinstance(database, Path):
        return SqliteStore(database)
    return PostgresStore(database, listen=listen)


def describe(database: Database) -> str:
    """The database as messages show it: the file's path, or the URL without its password."""
    return str(database) if isinstance(database, Path) else redacted(database)


def configured_database(settings: Settings) -> Database:
    """CI_DATABASE_URL if set, else the SQLite file at CI_DB_PATH."""
    return settings.database_url or settings.db_path


def open_store(settings: Settings) -> Store:
    """The settings' store (not yet open)."""
    return store_at(configured_database(settings), listen=settings.database_listen)


def open_blob_store(settings: Settings) -> BlobStore:
    """Where the settings keep uploads (not yet open): CI_BLOB_STORE, by default PostgreSQL
    with CI_DATABASE_URL (workers on other hosts read it), else CI_DATA_DIR/blobs."""
    if settings.resolved_blob_store == "postgres":
        assert settings.database_url is not None  # Settings refuses postgres without it
        return PostgresBlobStore(settings.database_url)
    return FileBlobStore(settings.resolved_data_dir / "blobs")
