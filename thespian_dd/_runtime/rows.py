"""A stored row's format: what the Replicator sends for a key, what a row holds, and the checksum
or MAC that seals it.

Every column that loading reads (node, key, data type, format version, payload, replicas) is
covered, length-prefixed so no two different rows feed the same bytes.  A row written without a
signing key carries a 16-byte BLAKE2b checksum (it catches corruption); with one, a 32-byte
HMAC-SHA256 (it also catches tampering, and a row signed with another key).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NamedTuple

__all__ = [
    "BAD_CHECKSUM",
    "BAD_MAC",
    "CHECKSUM_BYTES",
    "DELETED",
    "FORGOTTEN",
    "MAC_BYTES",
    "NOT_SIGNED",
    "SIGNED",
    "Entry",
    "StoredRow",
    "checksum",
    "key_id",
    "mac",
    "parts",
]


DELETED = "deleted"
"""The data type recorded for a deleted key (its payload is empty)."""

CHECKSUM_BYTES = 16
"""The checksum of a row written without a signing key (BLAKE2b)."""

MAC_BYTES = 32
"""The checksum column of a row written with a signing key: an HMAC-SHA256."""

NOT_SIGNED = "the row is not signed (written without the signing key)"
BAD_MAC = "the row's MAC does not match (tampered, or signed with another key)"
SIGNED = "the row is signed: configure its signing key to load it"
BAD_CHECKSUM = "the row's checksum does not match (tampered or corrupted)"


class Entry(NamedTuple):
    """What the Replicator sends to be stored for one key (``None`` instead: deleted, a
    tombstone; :data:`FORGOTTEN`: no row at all)."""

    data_type: str
    payload: bytes
    replicas: str


FORGOTTEN = Entry("", b"", "")
"""The entry of a key that expired: its row is deleted (no tombstone is kept)."""


class StoredRow(NamedTuple):
    """One row as stored, for :meth:`Store.rows` (the ``inspect`` command)."""

    node: str
    key: str
    data_type: str
    format_version: int
    payload: bytes
    replicas: str
    updated_at: float
    error: str | None  # why the row cannot be loaded, or None


def key_id(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def parts(*columns: str | int | bytes) -> list[bytes]:
    """A row's columns as its checksum (or MAC) covers them: node, key, data type, format
    version, payload and replicas, all that loading reads."""
    return [
        c.encode() if isinstance(c, str) else b"%d" % c if isinstance(c, int) else c
        for c in columns
    ]


def checksum(parts: list[bytes]) -> bytes:
    """The checksum of a row written without a signing key (BLAKE2b, 16 bytes)."""
    return _feed(hashlib.blake2b(digest_size=CHECKSUM_BYTES), parts)


def mac(signing_key: bytes, parts: list[bytes]) -> bytes:
    """The MAC of a row written with a signing key (HMAC-SHA256, 32 bytes)."""
    return _feed(hmac.new(signing_key, digestmod=hashlib.sha256), parts)


def _feed(h: hashlib.blake2b | hmac.HMAC, parts: list[bytes]) -> bytes:
    # Length-prefixed: no two different rows feed the same bytes.  One update of the joined
    # bytes costs a third of two updates per part.
    h.update(b"".join([_LENGTH(len(part)) + part for part in parts]))
    return h.digest()


_LENGTH = struct.Struct(">Q").pack
