"""The data types the codec knows: the built-in ones, whose order gives their format-2 codes,
and the ones registered with :func:`register_data_type`, by the name their values carry."""

from __future__ import annotations

from typing import Any

from thespian_dd._canonical import CodecError, Limits, decode_tree, encode_tree
from thespian_dd._codec.checks import expect
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

BUILT_IN: tuple[type[ReplicatedData], ...] = (
    GCounter,
    PNCounter,
    GSet,
    ORSet,
    Flag,
    LWWRegister,
    MVRegister,
    ORMap,
    LWWMap,
    PNCounterMap,
    ORMultiMap,
)
"""The built-in types; a type's place here is its code in format 2, so a new one goes last."""
BUILT_IN_TYPES = frozenset(BUILT_IN)
"""The types the codec knows without :func:`~thespian_dd.register_data_type`."""
CODES = {cls: code for code, cls in enumerate(BUILT_IN)}
"""Format 2's code of each built-in type."""
BACKED_VALUES: dict[type[ReplicatedData], type[ReplicatedData]] = {
    LWWMap: LWWRegister,
    PNCounterMap: PNCounter,
    ORMultiMap: ORSet,
}
"""The maps backed by an ORMap, and the one type of value each holds."""
REGISTERED: dict[str, type[ReplicatedData]] = {}
"""The data types of one's own, by the name they were registered under."""
_NAMES: dict[type[ReplicatedData], str] = {cls: cls.__name__ for cls in BUILT_IN}


def type_name(data: ReplicatedData) -> str:
    """The name under which ``data``'s type is encoded (stored in the ``data type`` column)."""
    try:
        return _NAMES[type(data)]
    except KeyError:
        raise TypeError(
            f"{type(data).__name__} is not a known thespian_dd data type (a type of your own "
            "must be registered: see register_data_type)"
        ) from None


def register_data_type(cls: type[ReplicatedData], name: str) -> None:
    """Let the codec encode, store and gossip values of ``cls``, a data type of one's own,
    under ``name``.

    ``name`` is what the store's rows and peers' messages carry instead of the class: keep it
    when the class moves or is renamed.  It must contain a dot (``"myapp.MaxRegister"``; names
    without one are kept for the built-in types) and be registered once: a second registration of
    a name or of a class raises :class:`ValueError` (a class that is no
    :class:`~thespian_dd.data.ReplicatedData`: :class:`TypeError`).

    A value is encoded as its ``_state()`` (the constructor arguments, as the base class
    :class:`~thespian_dd.data.ReplicatedData` and pickling already use), made of plain data:
    ``None``, bools, ints, floats, strs, bytes, tuples, lists, sets, frozensets, dicts and
    :class:`~thespian_dd.data.ReplicaId` (other objects travel as dill pickles).  It is decoded as
    ``cls(*state)``, so the constructor must refuse, with ``ValueError`` or ``TypeError``, any
    arguments its ``_state()`` would not give.  The codec holds the type to what it holds its
    own types to: encoding checks that the bytes decode to an equal value, and decoding refuses
    (with :class:`~thespian_dd.codec.CodecError`) a state the constructor refuses, and any state
    other than the one spelling that the decoded value encodes to, so equal values have equal
    bytes and digests.

    Register at import of the module that defines ``cls``, and have every node import that
    module before it reads a value (the Replicator's ``data_types`` setting, ``--data-types`` of
    the node command): a node that does not know the type refuses its stored rows and its
    values from peers.  Run the project's laws on the type (docs: custom types).
    """
    if not (isinstance(cls, type) and issubclass(cls, ReplicatedData)):
        raise TypeError(f"a data type must be a ReplicatedData subclass, not {cls!r}")
    if cls.__module__ == "__main__":
        raise ValueError(
            f"{cls.__qualname__} is defined in __main__, which other processes cannot import: "
            "define it in a module that every node imports"
        )
    if not isinstance(name, str) or "." not in name.strip(".") or name != name.strip():
        raise ValueError(
            f"a data type's name must be a str with a dot, e.g. 'myapp.{cls.__name__}' "
            f"(names without one are kept for the built-in types), not {name!r}"
        )
    if name in REGISTERED:
        raise ValueError(f"the data type name {name!r} is already registered")
    if cls in _NAMES:
        raise ValueError(f"{cls.__qualname__} is already registered as {_NAMES[cls]!r}")
    _NAMES[cls] = name
    REGISTERED[name] = cls


def registered_state(data: ReplicatedData) -> Any:
    """The state a registered type's value is encoded as (in both formats), once it is known to
    decode to an equal value."""
    cls = type(data)
    state = data._state()
    try:
        back = registered_value(cls, decode_tree(encode_tree(state), Limits()))
    except CodecError as e:
        raise ValueError(f"{_NAMES[cls]}: its own state does not decode: {e}") from None
    if back != data:
        raise ValueError(
            f"{_NAMES[cls]}: {data!r} does not decode to an equal value (got {back!r}): its "
            "_state() must give the constructor's arguments, in plain data"
        )
    return state


def registered_value(cls: type[ReplicatedData], state: Any) -> ReplicatedData:
    """The value of registered type ``cls`` that ``state`` spells, if it is the one spelling."""
    expect(isinstance(state, tuple), f"a {_NAMES[cls]} state is a tuple of its arguments")
    try:
        value = cls(*state)
    except Exception as e:  # noqa: BLE001 - the type's own constructor: whatever it refuses
        raise CodecError(f"invalid state: {type(e).__name__}: {e}") from None
    expect(type(value) is cls, f"{cls.__qualname__}(...) gives a {cls.__qualname__}")
    expect(
        encode_tree(value._state()) == encode_tree(state),
        "the state is the one spelling of its value",
    )
    return value
