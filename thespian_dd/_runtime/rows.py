"""A stored row's format: what the Replicator sends for a key, what a row holds, the checksum
or MAC that seals it, and the checks a row must pass to be loaded.

Every column that loading reads (node, key, data type, format version, payload, replicas) is
covered, length-prefixed so no two different rows feed the same bytes.  A row written without a
signing key carries a 16-byte BLAKE2b checksum (it catches corruption); with one, a 32-byte
HMAC-SHA256 (it also catches tampering, and a row signed with another key).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from thespian_dd import codec
from thespian_dd._runtime.database import first_line

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
    "RowSeal",
    "StoredRow",
    "checked",
    "checksum",
    "key_id",
    "mac",
    "parts",
    "problem",
    "stored_row",
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


class RowSeal:
    """The checksum column due for rows of ``node``: :func:`checksum` (or, with a
    ``signing_key``, :func:`mac`) of the row's :func:`parts`, the same bytes, made in one
    expression with the node's part prepared once, and the parts a node's rows share (data type
    and format version, replicas) remembered: a load checks every row of one node."""

    def __init__(self, node: str, signing_key: bytes | None) -> None:
        encoded = node.encode()
        self._head = _LENGTH(len(encoded)) + encoded
        self._signing_key = signing_key
        self.signed = signing_key is not None
        """Rows are sealed with a MAC (a signing key), not a checksum."""
        self._kinds: dict[tuple[str, int], bytes] = {}  # (data type, version) -> their parts
        self._replicas: dict[str, bytes] = {}  # replicas -> its part

    def __call__(
        self, key: str, data_type: str, version: int, payload: bytes, replicas: str
    ) -> bytes:
        k = key.encode()
        kind = self._kinds.get((data_type, version)) or self._kind(data_type, version)
        tail = self._replicas.get(replicas) or self._tail(replicas)
        fed = b"".join((self._head, _LENGTH(len(k)), k, kind, _LENGTH(len(payload)), payload, tail))
        if self._signing_key is None:
            return hashlib.blake2b(fed, digest_size=CHECKSUM_BYTES).digest()
        return hmac.digest(self._signing_key, fed, "sha256")

    def _kind(self, data_type: str, version: int) -> bytes:
        """The parts of a data type and format version (remembered, up to a bound)."""
        d, v = data_type.encode(), b"%d" % version
        kind = _LENGTH(len(d)) + d + _LENGTH(len(v)) + v
        if len(self._kinds) < _REMEMBERED:
            self._kinds[data_type, version] = kind
        return kind

    def _tail(self, replicas: str) -> bytes:
        """The part of a replicas list (remembered, up to a bound)."""
        r = replicas.encode()
        tail = _LENGTH(len(r)) + r
        if len(self._replicas) < _REMEMBERED:
            self._replicas[replicas] = tail
        return tail

    def check(
        self, rows: Iterable[Sequence[Any]]
    ) -> tuple[list[tuple[str, bytes | None]], list[tuple[str, str]]]:
        """The rows a node recovers from (their
        :data:`~thespian_dd._runtime.schema.LOAD_COLUMNS`), each checked: its checksum or MAC,
        its key id and its format version.  Returns the rows that pass, as (key, payload, or
        None if deleted), and those refused, as (key, why).

        A load checks 100,000s of rows: the good row's check is this loop, the seal of
        :meth:`__call__` made inline, the key encoded once for the seal and the key id; a row
        that fails it, or raises (a column of a wrong type), is settled by :func:`problem`."""
        loaded: list[tuple[str, bytes | None]] = []
        refused: list[tuple[str, str]] = []
        formats, compare, blake2b, length = (
            codec.FORMAT_VERSIONS,
            hmac.compare_digest,
            hashlib.blake2b,
            _LENGTH,
        )
        head, kinds, tails, signing_key = self._head, self._kinds, self._replicas, self._signing_key
        for row in rows:
            stored_key_id, key, data_type, version, payload, replicas, check = row
            try:
                k = key.encode()
                kind = kinds.get((data_type, version)) or self._kind(data_type, version)
                tail = tails.get(replicas) or self._tail(replicas)
                fed = b"".join((head, length(len(k)), k, kind, length(len(payload)), payload, tail))
                due = (
                    blake2b(fed, digest_size=CHECKSUM_BYTES).digest()
                    if signing_key is None
                    else hmac.digest(signing_key, fed, "sha256")
                )
                good = (
                    type(version) is int
                    and version in formats
                    and compare(due, check)
                    and stored_key_id == blake2b(k, digest_size=16).hexdigest()
                )
            except Exception:  # noqa: BLE001 - a column of a wrong type: problem() says which
                good = False
            if not good:
                try:
                    error = problem(self, *row)
                except Exception as e:  # noqa: BLE001 - a row that cannot even be checked
                    error = _UNCHECKABLE + first_line(e)
                if error is not None:
                    refused.append(((key if isinstance(key, str) else repr(key)), error))
                    continue
            if data_type == DELETED:
                loaded.append((key, None))
            else:
                loaded.append((key, payload if type(payload) is bytes else bytes(payload)))
        return loaded, refused


_REMEMBERED = 1024
"""The distinct kinds and replica lists a :class:`RowSeal` remembers (a node's rows share few;
a tampered store may hold many)."""


_UNCHECKABLE = "the row cannot be checked (tampered or corrupted): "
_WRONG_TYPE = "a column of the row has the wrong type (tampered or corrupted)"


def checked(
    row: tuple[Any, ...], seals: dict[str, RowSeal], signing_key: bytes | None
) -> str | None:
    """Why ``row`` (its node, then :data:`~thespian_dd._runtime.schema.LOAD_COLUMNS`) must not
    be loaded, or None; ``seals``: the RowSeal of each node met so far."""
    node = row[0]
    if not isinstance(node, str):
        return _WRONG_TYPE
    seal = seals.get(node)
    if seal is None:
        seal = seals[node] = RowSeal(node, signing_key)
    try:
        return problem(seal, *row[1:8])
    except Exception as e:  # noqa: BLE001 - a row that cannot even be checked
        return _UNCHECKABLE + first_line(e)


def problem(  # noqa: PLR0913, PLR0917 - the columns of a row, as selected
    seal: RowSeal,
    stored_key_id: object,
    key: object,
    data_type: object,
    version: object,
    payload: object,
    replicas: object,
    check: object,
) -> str | None:
    """Why a row must not be loaded, or None: its columns' types, its checksum (or MAC, as
    ``seal`` makes them for its node), its key id and its format version."""
    if not (
        type(key) is str
        and type(data_type) is str
        and type(replicas) is str
        and type(version) is int
        and isinstance(payload, (bytes, memoryview))
        and isinstance(check, (bytes, memoryview))
    ):
        return _WRONG_TYPE
    due = seal(key, data_type, version, bytes(payload), replicas)
    if not hmac.compare_digest(due, bytes(check)):
        if not seal.signed:
            # It cannot be verified without the key: never load it unverified.
            return SIGNED if len(check) == MAC_BYTES else BAD_CHECKSUM
        return NOT_SIGNED if len(check) == CHECKSUM_BYTES else BAD_MAC
    if stored_key_id != key_id(key):
        return "the row's key id does not match its key (tampered or corrupted)"
    if version not in codec.FORMAT_VERSIONS:
        return f"format version {version} is not one this code reads {codec.FORMAT_VERSIONS}"
    return None


def stored_row(row: tuple[Any, ...], error: str | None) -> StoredRow:
    """``row`` (its node, :data:`~thespian_dd._runtime.schema.LOAD_COLUMNS` and ``updated_at``)
    as a :class:`StoredRow`; a refused row's columns may be of any type (tampered): they are made
    printable."""
    node, _, key, data_type, version, payload, replicas, _, updated_at = row
    texts: list[Any] = [node, key, data_type, replicas]
    if error is not None:
        texts = [v if isinstance(v, str) else repr(v) for v in texts]
    node, key, data_type, replicas = texts
    payload = bytes(payload) if isinstance(payload, (bytes, memoryview)) else b""
    return StoredRow(node, key, data_type, version, payload, replicas, updated_at, error)
