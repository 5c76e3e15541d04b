"""Version negotiation: which peer protocol and which codec format each pair of nodes uses.

A node announces the protocol versions and codec format versions it reads and writes, in every
hello and every gossip status (the ``versions`` field: a dict of plain tuples, so a node of an
earlier release, which has no such field, unpickles the message and ignores it).  A peer that
announces nothing is of the first release: it speaks protocol 1 and format 1 (:data:`LEGACY`).

A pair uses the highest version both speak, of each; a node sends a peer only what the peer reads
(payloads encoded in the pair's format, anti-entropy digests computed in it).  A peer with no
version in common cannot be talked to at all: it is said once in the log, shown in Stats and
Status, kept out of the peer table (it gets no requests; the Replicator does not learn it from
other peers' directories), and the node goes on serving its clients.

Pure logic, without Thespian: the Replicator keeps one :class:`Versions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from thespian_dd import codec
from thespian_dd.data import ReplicaId

__all__ = [
    "LEGACY",
    "PROTOCOL_VERSIONS",
    "Speaks",
    "Versions",
    "format_of",
    "format_prefix",
]

PROTOCOL_VERSIONS: tuple[int, ...] = (1,)
"""Every peer protocol version this node reads and writes, ascending."""

_MAGIC = b"TDD"  # the codec's: a format version byte follows it


def format_of(raw: bytes) -> int | None:
    """The format version of a codec encoding (None: not one)."""
    return raw[len(_MAGIC)] if len(raw) > len(_MAGIC) and raw.startswith(_MAGIC) else None


def format_prefix(version: int) -> bytes:
    """What every codec encoding of format ``version`` starts with: ``raw`` starts with it
    exactly when ``format_of(raw) == version``."""
    return _MAGIC + bytes((version,))


@dataclass(frozen=True)
class Speaks:
    """The protocol and format versions a node reads and writes, ascending."""

    protocols: tuple[int, ...]
    formats: tuple[int, ...]

    def announcement(self) -> dict[str, tuple[int, ...]]:
        """What travels in a message (plain data: every release can unpickle it)."""
        return {"protocol": self.protocols, "format": self.formats}

    @classmethod
    def parse(cls, announced: object) -> Speaks | None:
        """A peer's announcement (None: absent, so :data:`LEGACY`); raises ValueError for
        one that is malformed."""
        if announced is None:
            return None
        if not isinstance(announced, Mapping):
            raise ValueError(  # noqa: TRY004 - one error for every malformed announcement
                f"a versions announcement is a dict, not {type(announced).__name__}"
            )
        parts = []
        for name in ("protocol", "format"):
            versions = announced.get(name)
            if not (
                isinstance(versions, tuple)
                and versions
                and all(type(v) is int and v > 0 for v in versions)
            ):
                raise ValueError(f"the announced {name} versions are {versions!r}")
            parts.append(tuple(sorted(set(versions))))
        return cls(parts[0], parts[1])

    def __str__(self) -> str:
        return f"protocol {_list(self.protocols)}, format {_list(self.formats)}"


LEGACY = Speaks((1,), (1,))
"""What a peer that announces nothing speaks: the first release."""

MINE = Speaks(PROTOCOL_VERSIONS, codec.FORMAT_VERSIONS)
"""What this node speaks."""


def _list(versions: tuple[int, ...]) -> str:
    return "/".join(map(str, versions))


def common(a: Speaks, b: Speaks) -> tuple[int, int] | None:
    """The highest (protocol, format) both speak; None if they share no protocol or no format."""
    protocols = set(a.protocols) & set(b.protocols)
    formats = set(a.formats) & set(b.formats)
    if not protocols or not formats:
        return None
    return max(protocols), max(formats)


class Versions:
    """What each peer (by node name) speaks, as it last announced, and what each pair uses.

    A peer not heard from yet is taken as :data:`LEGACY` if this node speaks that (the safe
    guess: the lowest versions), until its hello or status says more.  ``clock``: monotonic
    seconds (a peer it cannot talk to is forgotten once silent long enough)."""

    def __init__(self, me: Speaks = MINE, clock: Callable[[], float] = time.monotonic) -> None:
        self.me = me
        self._clock = clock
        self._heard_at: dict[str, float] = {}
        self._from: dict[str, ReplicaId | None] = {}  # the replica (incarnation) that announced
        self._speaks: dict[str, Speaks] = {}
        self._pair: dict[str, tuple[int, int]] = {}
        self._legacy: set[str] = set()  # peers that announce nothing
        self.incompatible: dict[str, str] = {}
        """Peers this node cannot talk to, with why (until they announce something it can)."""
        lowest = common(me, LEGACY) or (me.protocols[0], me.formats[0])
        self._default = lowest

    def heard(self, node: str, announced: object, replica: ReplicaId | None = None) -> str | None:
        """``node`` announced ``announced`` (a message's ``versions`` field; None: a peer of
        the first release), as its replica ``replica``.  Returns the reason it cannot be talked
        to if that is new (for the log, once); None otherwise.  Raises ValueError for a
        malformed announcement (nothing is changed)."""
        parsed = Speaks.parse(announced)
        speaks = parsed or LEGACY
        self._from[node] = replica
        self._heard_at[node] = self._clock()
        self._speaks[node] = speaks
        self._legacy.discard(node) if parsed else self._legacy.add(node)
        pair = common(self.me, speaks)
        if pair is not None:
            self._pair[node] = pair
            self.incompatible.pop(node, None)
            return None
        self._pair.pop(node, None)
        reason = f"it speaks {speaks}; this node speaks {self.me}"
        new = self.incompatible.get(node) != reason
        self.incompatible[node] = reason
        return reason if new else None

    def can_talk(self, node: str) -> bool:
        return node not in self.incompatible

    def protocol(self, node: str) -> int:
        """The protocol version of messages to ``node``."""
        return self._pair.get(node, self._default)[0]

    def format(self, node: str) -> int:
        """The codec format of payloads and digests for ``node``."""
        return self._pair.get(node, self._default)[1]

    def speaks(self, node: str) -> Speaks | None:
        """What ``node`` last announced (None: nothing heard from it yet)."""
        return self._speaks.get(node)

    def describe(self, node: str) -> str:
        """What ``node`` speaks and what the pair uses, for Status ("" if not heard yet)."""
        speaks = self._speaks.get(node)
        if speaks is None:
            return ""
        said = (
            f"{speaks} (announces nothing: the first release)"
            if node in self._legacy
            else str(speaks)
        )
        if node in self.incompatible:
            return f"{said} -> none in common"
        return f"{said} -> protocol {self.protocol(node)}, format {self.format(node)}"

    def formats(self, nodes: Iterable[str]) -> set[int]:
        """The formats in use with ``nodes``."""
        return {self.format(n) for n in nodes}

    def forget(self, node: str) -> None:
        """``node`` is gone for good."""
        for records in (self._speaks, self._pair, self.incompatible, self._heard_at, self._from):
            records.pop(node, None)
        self._legacy.discard(node)

    def replaced(self, old: ReplicaId) -> None:
        """Replica ``old`` gave way to a new incarnation of its node, which may
        run another release (a rollback): what ``old`` announced no longer holds, and the pair
        falls back to the safe guess until the new one announces (if it did already, that
        stays)."""
        if self._from.get(old.node) == old:
            self.forget(old.node)

    def forget_silent(self, seconds: float) -> None:
        """Forget the peers it cannot talk to that were not heard for ``seconds`` (they are not
        in the peer table, whose removal would forget them)."""
        now = self._clock()
        for node in list(self.incompatible):
            if now - self._heard_at.get(node, now) > seconds:
                self.forget(node)
