"""``thespian-dd migrate``: bring a store to this release's schema and codec format.

Not needed for a rolling upgrade (a node reads the rows of every earlier format, and writes a key
in the current one when it next changes): run it to upgrade every row at once, e.g. before
dropping a release that only reads the old format, or when the release notes say the schema
changes.  One transaction where the database allows it; running it twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from thespian_dd import codec
from thespian_dd._runtime.database import safe_url
from thespian_dd._runtime.schema import SCHEMA_VERSION
from thespian_dd._runtime.store import Store

__all__ = ["migrate_store"]

SHOWN = 20
"""Rows left as they were that are named one by one; the rest are counted."""


def migrate_store(url: str, out: Callable[[str], object], signing_key: bytes | None = None) -> int:
    """Migrate the store at ``url`` (or ``file:PATH``), opened with ``signing_key`` if its rows
    are signed; returns the exit status (1 if some rows could not be upgraded).  Raises
    :class:`~thespian_dd._runtime.database.StoreError` if the store cannot be opened (nothing is
    created), is of a newer schema, or the migration fails (then nothing changed)."""
    store = Store(url, create=False, signing_key=signing_key)
    try:
        done = store.migrate()
    finally:
        store.close()
    schema = (
        f"schema version {done.schema_from} -> {SCHEMA_VERSION}"
        if done.schema_from < SCHEMA_VERSION
        else f"schema version {SCHEMA_VERSION} (current)"
    )
    out(
        f"migrated {safe_url(url)}: {schema}, {done.nodes} nodes; "
        f"{done.rows_upgraded} rows upgraded to format {codec.FORMAT_VERSION}, "
        f"{len(done.rows_left)} left as they were"
    )
    for node, key, why in done.rows_left[:SHOWN]:
        out(f"  left {node} {key!r}: {why}")
    if len(done.rows_left) > SHOWN:
        out(f"  ... and {len(done.rows_left) - SHOWN} more (see: thespian-dd inspect)")
    return 1 if done.rows_left else 0
