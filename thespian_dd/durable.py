"""Durable storage, by its old name: the SQL store lives in :mod:`thespian_dd._runtime.store`
(and the modules it names), the DurableWriter actor and its messages in
:mod:`thespian_dd._runtime.writer`.

This module stays, re-exporting the public names it held before they moved, because Thespian
creates an actor from its ``"module.Class"`` path, and a node of the old layout names its writer
``thespian_dd.durable.DurableWriter``: that path must still lead to the class.  Code inside the
package imports from the two modules above.
"""

from __future__ import annotations

from thespian_dd._runtime.database import StoreError, read_signing_key, safe_url
from thespian_dd._runtime.rows import (
    BAD_CHECKSUM,
    BAD_MAC,
    CHECKSUM_BYTES,
    DELETED,
    FORGOTTEN,
    MAC_BYTES,
    NOT_SIGNED,
    SIGNED,
    Entry,
    StoredRow,
    key_id,
)
from thespian_dd._runtime.schema import SCHEMA_VERSION
from thespian_dd._runtime.store import LOAD_CHUNK_ROWS, Store
from thespian_dd._runtime.writer import (
    LOAD_CHUNK_BYTES,
    DurableWriter,
    Load,
    LoadChunk,
    Loaded,
    Write,
    Written,
)

__all__ = [
    "BAD_CHECKSUM",
    "BAD_MAC",
    "CHECKSUM_BYTES",
    "DELETED",
    "FORGOTTEN",
    "LOAD_CHUNK_BYTES",
    "LOAD_CHUNK_ROWS",
    "MAC_BYTES",
    "NOT_SIGNED",
    "SCHEMA_VERSION",
    "SIGNED",
    "DurableWriter",
    "Entry",
    "Load",
    "LoadChunk",
    "Loaded",
    "Store",
    "StoreError",
    "StoredRow",
    "Write",
    "Written",
    "key_id",
    "read_signing_key",
    "safe_url",
]
