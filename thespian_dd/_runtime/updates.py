"""An Update, applied: what is checked before ``modify`` runs, and what its result must be.

``modify`` is the caller's code, run on the node: whatever it raises or returns wrong is the
caller's failure (a ModifyFailure), never the Replicator's.  What it returns must be a value of
the same type and an inflation of the one it was given (merged with a replica that holds the
current value, anything else would lose writes).
"""

from __future__ import annotations

from thespian_dd import codec
from thespian_dd._runtime.checks import consistency_error, describe, key_error
from thespian_dd.data import CausalContext, DeltaReplicatedData, ReplicaId, ReplicatedData
from thespian_dd.gcounter import GCounter
from thespian_dd.messages import Update, WriteConsistency
from thespian_dd.pncounter import PNCounter

__all__ = ["modified", "update_error"]


def update_error(
    msg: Update, current: ReplicatedData | None, *, deleted: bool
) -> tuple[str | None, bool]:
    """Why ``msg`` cannot be applied to ``current`` (the key's value; ``deleted``: it is
    tombstoned), or None; and whether that makes it a malformed input (counted as rejected).
    Holding another type than ``initial`` is the caller's mistake, not a malformed message."""
    error = key_error(msg.key)
    if not error and not isinstance(msg.initial, ReplicatedData):
        error = f"initial must be a CRDT (ReplicatedData), not {type(msg.initial).__name__}"
    error = error or consistency_error(msg.consistency, WriteConsistency)
    if error:
        return error, True
    if current is not None and type(current) is not type(msg.initial):
        return (
            f"key {msg.key!r} holds a {type(current).__name__}; initial is a "
            f"{type(msg.initial).__name__}"
        ), False
    if current is None and not deleted:
        # A new key starts from initial: a state the codec cannot encode (broken internals, a
        # type it does not know) would make every later gossip round raise.
        try:
            codec.decode(codec.encode(msg.initial))
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it is the caller's
            return f"initial is not a valid {type(msg.initial).__name__}: {describe(e)}", True
    return None, False


def modified(
    msg: Update, current: ReplicatedData | None, node: ReplicaId
) -> tuple[ReplicatedData, ReplicatedData]:
    """The key's new value after ``msg.modify`` ran as ``node`` on ``current`` (None: a new key,
    which starts from ``msg.initial``), and what to ship as its delta (the whole value for types
    without deltas, and for a key new here: a delta alone could be a partial state for a peer).
    Raises whatever ``modify`` raises, and TypeError/ValueError for a result it may not give."""
    try:
        modify = msg.modify
    except Exception as e:  # noqa: BLE001 - the dill bytes are the caller's
        raise ValueError(f"modify could not be loaded: {describe(e)}") from None
    if not callable(modify):
        raise TypeError(f"modify must be callable, not {type(modify).__name__}")
    start = msg.initial if current is None else current
    if isinstance(start, DeltaReplicatedData):
        start = start.reset_delta()
    new = modify(start, node)
    if type(new) is not type(start):
        raise TypeError(f"modify must return a {type(start).__name__}, not {type(new).__name__}")
    if not new.is_inflation_of(start):
        raise ValueError(
            f"what modify returned for key {msg.key!r} is not an inflation of the current "
            f"{type(start).__name__}: merged with a replica that holds the current value, "
            "it would lose writes (build the new value from the one modify is given, with "
            "its methods; an LWW write must be later than the current one)"
        )
    shipped = new
    if isinstance(new, DeltaReplicatedData):
        delta = new.delta
        new = new.reset_delta()
        shipped = new if delta is None or current is None else delta
    # Checked now, while nothing is applied: a value the codec cannot encode (an element it has
    # no encoding for, a type of one's own that fails) would make every later store write and
    # gossip round of the key raise.  Of a built-in type only what is new needs it (the delta);
    # a type of one's own is encoded whole.
    if _counts_only(shipped):
        return new, shipped
    try:
        codec.encode(shipped if type(new) in codec.BUILT_IN_TYPES else new)
    except Exception as e:  # noqa: BLE001 - the caller's values, whatever they raise
        raise ValueError(f"what modify returned cannot be encoded: {describe(e)}") from None
    return new, shipped


def _counts_only(value: object) -> bool:
    """Whether ``value`` is a counter (GCounter, PNCounter) whose units name only ReplicaIds,
    with int bounds: the codec writes any such counter, so it need not be encoded to know it
    (an Update's most common value, whose encoding was a third of the Replicator's work on it:
    6 µs of 16).  Anything else, a counter made of other parts included, is encoded."""
    if type(value) is GCounter:
        return _plain(value.units)
    if type(value) is PNCounter:
        p, n = value.p, value.n
        return type(p) is GCounter and type(n) is GCounter and _plain(p.units) and _plain(n.units)
    return False


def _plain(units: object) -> bool:
    if type(units) is not CausalContext:
        return False
    ranges, floor = units.ranges, units.floor
    if type(ranges) is not dict or type(floor) is not dict:
        return False
    for replica, bounds in ranges.items():
        if type(replica) is not ReplicaId or type(bounds) is not tuple:
            return False
        for bound in bounds:
            if type(bound) is not int:
                return False
    return all(type(r) is ReplicaId and type(n) is int for r, n in floor.items())
