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

from typing import Any, Generic, get_args, get_origin

from thespian_dd._typevars import A, D, K, V
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


class Key(str, Generic[D]):
    """A key whose value is a ``D``: ``Key[ORSet[str]]("cart")``.  A ``str`` subclass, equal to
    and hashed as the plain ``str``, pickled as one."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        # Only str crosses the wire or reaches the store: a peer or a store reader need not
        # know this class.
        return (str, (str(self),))


GCounterKey = Key[GCounter]
PNCounterKey = Key[PNCounter]
FlagKey = Key[Flag]
GSetKey = Key[GSet[A]]
ORSetKey = Key[ORSet[A]]
LWWRegisterKey = Key[LWWRegister[A]]
MVRegisterKey = Key[MVRegister[A]]
ORMapKey = Key[ORMap[K, D]]
LWWMapKey = Key[LWWMap[K, V]]
PNCounterMapKey = Key[PNCounterMap[K]]
ORMultiMapKey = Key[ORMultiMap[K, V]]

for _alias in (
    GCounterKey,
    PNCounterKey,
    FlagKey,
    GSetKey,
    ORSetKey,
    LWWRegisterKey,
    MVRegisterKey,
    ORMapKey,
    LWWMapKey,
    PNCounterMapKey,
    ORMultiMapKey,
):
    _held = get_args(_alias)[0]
    _name = (get_origin(_held) or _held).__name__
    _params = ", ".join(p.__name__ for p in get_args(_held))
    _alias.__doc__ = f"A key holding a :class:`~thespian_dd.{_name}`: ``Key[{_name}]``" + (
        f"; ``{_name}Key[{_params}]`` is ``Key[{_name}[{_params}]]``." if _params else "."
    )
del _alias, _held, _name, _params
