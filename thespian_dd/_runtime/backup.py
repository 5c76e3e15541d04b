"""A store copied whole: :func:`backup` into a new SQLite file, :func:`restore` from one into an
empty store (the ``backup`` and ``restore`` commands)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from thespian_dd._runtime.database import StoreError, first_line, safe_url
from thespian_dd._runtime.schema import entries_table, nodes_table
from thespian_dd._runtime.store import LOAD_CHUNK_ROWS, Store

__all__ = ["backup", "restore"]


def backup(url: str, path: Path) -> tuple[int, int]:
    """Copy the store at ``url`` (or ``file:PATH``) into a new SQLite file at ``path``, which
    is then a store of its own (``inspect`` reads it, :func:`restore` copies it back, a node may
    use it as it is); returns (nodes, rows) copied.  A consistent snapshot, taken while nodes
    run: an SQLite store through SQLite's online backup (a plain copy of a WAL database may
    miss committed pages or tear), a server in one REPEATABLE READ transaction.  The rows keep
    their checksums or MACs.  Reads only; refuses an existing ``path``."""
    if path.exists():
        raise StoreError(f"{path} exists: a backup goes into a new file")
    source = Store(url, read_only=True)
    try:
        if source.engine.dialect.name == "sqlite":
            raw = source.engine.raw_connection()
            try:
                reader = raw.driver_connection
                assert isinstance(reader, sqlite3.Connection)
                with sqlite3.connect(path) as target:
                    reader.backup(target)
                target.close()
            finally:
                raw.close()
        else:
            copy_url = f"sqlite:///{path}"
            copy = Store(copy_url)
            try:
                _copy(source, copy, copy_url, snapshot=True)
            finally:
                copy.close()
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot back up {safe_url(url)}: {first_line(e)}") from e
    finally:
        source.close()
    return _counts(f"sqlite:///{path}")


def restore(path: Path, url: str) -> tuple[int, int]:
    """Copy the backup at ``path`` (see :func:`backup`) into the store at ``url``, creating its
    tables if needed, in one transaction; returns (nodes, rows).  The store must hold no node
    and no row: restore into a new database, or :meth:`Store.forget` its nodes first (their
    processes stopped)."""
    source = Store(f"sqlite:///{path.absolute()}", read_only=True)
    try:
        target = Store(url)
        try:
            _copy(source, target, url, snapshot=False)
        finally:
            target.close()
    finally:
        source.close()
    return _counts(url)


def _copy(source: Store, target: Store, target_url: str, *, snapshot: bool) -> None:
    """Every node record and row of ``source`` into ``target`` (empty; at ``target_url``), in
    one transaction of each; ``snapshot``: read in one REPEATABLE READ transaction (a server
    store)."""
    reading = source.engine.connect()
    if snapshot:
        reading = reading.execution_options(isolation_level="REPEATABLE READ")
    with reading, reading.begin(), target.engine.begin() as writing:
        held = writing.execute(sa.select(sa.func.count()).select_from(nodes_table)).scalar_one()
        held += writing.execute(sa.select(sa.func.count()).select_from(entries_table)).scalar_one()
        if held:
            raise StoreError(
                f"the store {safe_url(target_url)} is not empty: restore into a new "
                "database, or forget its nodes first (forget-node, with the nodes stopped)"
            )
        nodes = [dict(row._mapping) for row in reading.execute(sa.select(nodes_table))]
        if nodes:
            writing.execute(nodes_table.insert(), nodes)
        rows = reading.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(
            sa.select(entries_table)
        )
        for chunk in rows.partitions():
            writing.execute(entries_table.insert(), [dict(row._mapping) for row in chunk])


def _counts(url: str) -> tuple[int, int]:
    store = Store(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            nodes = conn.execute(sa.select(sa.func.count()).select_from(nodes_table)).scalar_one()
            rows = conn.execute(sa.select(sa.func.count()).select_from(entries_table)).scalar_one()
        return int(nodes), int(rows)
    finally:
        store.close()
