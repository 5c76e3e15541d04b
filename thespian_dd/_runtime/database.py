"""Opening a store's database: the URL a store setting names (``file:PATH``), the URL shown in
messages (:func:`safe_url`), the engine (connect and I/O timeouts, SQLite's pragmas, an SQLite
file read without being changed), the signing key file, and the error all of these raise.

Nothing here knows the store's tables (:mod:`thespian_dd._runtime.schema`) or rows
(:mod:`thespian_dd._runtime.rows`); :class:`~thespian_dd._runtime.store.Store` puts them
together.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from thespian_dd._runtime.checks import describe

__all__ = [
    "CONNECT_TIMEOUT",
    "IO_TIMEOUT",
    "STORE_FILE_PREFIX",
    "StoreError",
    "connect_args",
    "first_line",
    "open_engine",
    "read_signing_key",
    "safe_url",
    "sqlite_file",
    "store_url",
]

STORE_FILE_PREFIX = "file:"
"""A store setting ``file:PATH`` names a file holding the URL (see :func:`store_url`)."""

CONNECT_TIMEOUT = 5
"""Seconds a server store may take to accept a connection (unless its URL sets
``connect_timeout``): one commit attempt against a host that does not answer fails in bounded
time, as one against a locked SQLite file fails after its ``busy_timeout`` of 5 s."""

IO_TIMEOUT = 30
"""MariaDB/MySQL only (PyMySQL waits forever otherwise): seconds a read or write on an open
connection may stall, the server's greeting included, unless the URL sets ``read_timeout`` /
``write_timeout``."""


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message names the cause."""


def read_signing_key(path: str) -> bytes:
    """The signing key held in the file ``path`` (its whole content, which must not be empty).
    Errors name the file, never its content."""
    try:
        key = Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise StoreError(f"cannot read the signing key file {path}: {reason}") from None
    if not key:
        raise StoreError(f"the signing key file {path} is empty")
    return key


def store_url(store: str) -> str:
    """The SQLAlchemy URL a ``store`` setting names: the setting itself, or for
    ``file:PATH`` the first line of the file PATH.  The file is read here, in the process that
    opens the store, so a password in it never travels in capabilities or messages.  Errors name
    the file, never its content."""
    if not store.startswith(STORE_FILE_PREFIX):
        return store
    path = store[len(STORE_FILE_PREFIX) :]
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise StoreError(f"cannot read the store URL file {path}: {reason}") from None
    url = lines[0].strip() if lines else ""
    if not url:
        raise StoreError(f"the store URL file {path} is empty")
    return url


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs (``file:PATH`` as it is)."""
    if url.startswith(STORE_FILE_PREFIX):
        return url
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: say so without echoing it
        return "<not an SQLAlchemy URL>"


def first_line(error: BaseException) -> str:
    """An exception as one line (a database driver's message goes on for several)."""
    return describe(error).splitlines()[0]


def open_engine(url: str, *, create: bool, read_only: bool) -> sa.Engine:
    """The engine of the database at ``url`` (a URL, not a ``file:PATH`` setting).  Without
    ``create``, a missing SQLite file is refused before connecting (which would create it);
    ``read_only``: see :func:`_read_only_engine`.  Raises :class:`StoreError`."""
    file = sqlite_file(url)
    if not create and file is not None and not file.is_file():
        raise StoreError(f"cannot open the store {safe_url(url)}: no such file: {file}")
    try:
        if read_only:
            return _read_only_engine(url)
        engine = sa.create_engine(url, connect_args=connect_args(url))
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
    except Exception as e:
        raise StoreError(f"cannot open the store {safe_url(url)}: {first_line(e)}") from e
    return engine


def connect_args(url: str) -> dict[str, Any]:
    """The driver's timeouts for ``url`` (:data:`CONNECT_TIMEOUT`, :data:`IO_TIMEOUT`), less
    those its URL sets itself."""
    parsed = sa.make_url(url)
    timeouts: dict[str, int] = {}
    if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        timeouts["connect_timeout"] = CONNECT_TIMEOUT
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        timeouts |= {"read_timeout": IO_TIMEOUT, "write_timeout": IO_TIMEOUT}
    return {name: value for name, value in timeouts.items() if name not in parsed.query}


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite ``url``, or None (another store, in memory, or not a URL)."""
    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: create_engine says why
        return None
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or path in (None, "", ":memory:"):
        return None
    return Path(str(path)).absolute()


def _read_only_engine(url: str) -> sa.Engine:
    """An engine that only reads: an SQLite file opened read-only (any other store as usual).

    ``mode=ro`` alone still creates the ``-wal`` and ``-shm`` files beside a WAL database that
    has none (a stopped node's): such a file is opened ``immutable`` (no locks, no files) instead;
    while a node runs its ``-wal`` exists, and ``mode=ro`` reads it."""
    file = sqlite_file(url)
    if file is None:
        return sa.create_engine(url)
    mode = "mode=ro" + ("" if Path(f"{file}-wal").exists() else "&immutable=1")
    uri = f"{file.as_uri()}?{mode}"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not block the writer, and a commit is one append.  synchronous=FULL keeps a
    # committed transaction across a power cut, not only across a killed process.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
