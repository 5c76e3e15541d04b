"""Typed keys: a key that tells the type checker what data type it holds, as Akka's
``ORSetKey[A]("cart")`` does.

``Key[GCounter]("hits")`` (or its alias ``GCounterKey("hits")``) is a ``str`` in every way at
run time, so it goes wherever a key goes: in a message, in a :class:`~thespian_dd.Client` call,
as a ``dict`` key.  It pickles as a plain ``str``, so the Replicator, its peers and its store only
ever see ``str`` keys.  What it adds is static: ``client.get(GCounterKey("hits"))`` is typed
``GCounter | None``, where ``client.get("hits")`` is typed ``Any``.

Nothing checks at run time that a key holds the type its annotation says: the Replicator
refuses an update whose ``initial`` is of another type than the stored value, with
:class:`~thespian_dd.ModifyFailure` (raised by the client as :class:`~thespian_dd.ModifyError`).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar, get_args

from thespian_dd.data import ReplicatedData
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.lwwmap import LWWMap
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap
from thespian_dd.ormultimap import ORMultiMap
from thespian_dd.orset import ORSet
from thespian_dd.pncounter import PNCounter
from thespian_dd.pncountermap import PNCounterMap

__all__ = [
    "D",
    "FlagKey",
    "GCounterKey",
    "GSetKey",
    "Key",
    "LWWMapKey",
    "LWWRegisterKey",
    "MVRegisterKey",
    "ORMapKey",
    "ORMultiMapKey",
    "ORSetKey",
    "PNCounterKey",
    "PNCounterMapKey",
]

D = TypeVar("D", bound=ReplicatedData)
"""The data type a :class:`Key` holds: a type variable bound to
:class:`~thespian_dd.ReplicatedData`."""


class Key(str, Generic[D]):
    """A key whose value is a ``D``: ``Key[ORSet]("cart")``.  A ``str`` subclass, equal to and
    hashed as the plain ``str``, pickled as one."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # Only str crosses the wire or reaches the store: a peer or a store reader need not
        # know this class.
        return (str, (str(self),))


GCounterKey = Key[GCounter]
PNCounterKey = Key[PNCounter]
GSetKey = Key[GSet]
ORSetKey = Key[ORSet]
FlagKey = Key[Flag]
LWWRegisterKey = Key[LWWRegister]
MVRegisterKey = Key[MVRegister]
ORMapKey = Key[ORMap]
LWWMapKey = Key[LWWMap]
PNCounterMapKey = Key[PNCounterMap]
ORMultiMapKey = Key[ORMultiMap]

for _alias in (
    GCounterKey,
    PNCounterKey,
    GSetKey,
    ORSetKey,
    FlagKey,
    LWWRegisterKey,
    MVRegisterKey,
    ORMapKey,
    LWWMapKey,
    PNCounterMapKey,
    ORMultiMapKey,
):
    _name = get_args(_alias)[0].__name__
    _alias.__doc__ = f"A key holding a :class:`~thespian_dd.{_name}`: ``Key[{_name}]``."
del _alias, _name
