"""The public protocol: requests to the Replicator, their families of replies, consistency levels.

Every reply carries the request's ``key`` (where it has one) and the caller's ``request`` value,
untouched, so a caller can match replies to requests (Thespian's ``ask`` returns whatever reaches
the caller first).  Each request has a family of replies with a common base class, so a Thespian
actor can handle a whole family in one ``receiveMsg_GetResponse`` / ``receiveMsg_UpdateResponse``
/ ``receiveMsg_DeleteResponse`` handler.

``Update.modify`` may be a lambda or a closure from the caller's ``__main__``: the message carries
it pickled with dill, since Thespian pickles messages with plain pickle.
"""

from __future__ import annotations

import copyreg
import dis
import importlib
import inspect
import io
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from operator import itemgetter
from types import CodeType, FunctionType, ModuleType
from typing import Any

import dill

from thespian_dd._codec.registry import BUILT_IN
from thespian_dd._shown import short, show_as, shown
from thespian_dd.data import ReplicaId, ReplicatedData

__all__ = [
    "Changed",
    "DataDeleted",
    "Delete",
    "DeleteResponse",
    "DeleteSuccess",
    "Deleted",
    "Expired",
    "FlushChanges",
    "Get",
    "GetDataDeleted",
    "GetFailure",
    "GetKeys",
    "GetReplicaCount",
    "GetResponse",
    "GetStats",
    "GetStatus",
    "GetSuccess",
    "InvalidRequest",
    "Keys",
    "ModifyFailure",
    "NotFound",
    "PeerStatus",
    "ReadAll",
    "ReadConsistency",
    "ReadFrom",
    "ReadLocal",
    "ReadMajority",
    "ReplicaCount",
    "ReplicationDeleteFailure",
    "Stats",
    "Status",
    "StoreFailure",
    "Subscribe",
    "Unsubscribe",
    "Update",
    "UpdateDataDeleted",
    "UpdateResponse",
    "UpdateSuccess",
    "UpdateTimeout",
    "WriteAll",
    "WriteConsistency",
    "WriteLocal",
    "WriteMajority",
    "WriteTo",
    "majority",
]

# -- consistency levels -------------------------------------------------------------------------


def majority(n: int, min_cap: int = 0) -> int:
    """A majority of ``n`` replicas (this one included): ``min(n, max(n // 2 + 1, min_cap))``."""
    return min(n, max(n // 2 + 1, min_cap))


def _check_timeout(timeout: object) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")


class ReadConsistency(ABC):
    """How many replicas a read must hear from (this one included)."""

    __slots__ = ()

    @abstractmethod
    def replicas_needed(self, n: int) -> int:
        """How many of the ``n`` known replicas must answer."""


class WriteConsistency(ABC):
    """How many replicas must have applied a write before it is acknowledged."""

    __slots__ = ()

    @abstractmethod
    def replicas_needed(self, n: int) -> int:
        """How many of the ``n`` known replicas must have the write."""


# The rules, shared by the read and write levels of the same name.


@dataclass(frozen=True, slots=True)
class _Local:
    def __reduce__(self) -> tuple[Any, ...]:
        # No fields: the class alone (a dataclass with slots pickles its fields by name, in
        # Python, 3 µs a message).
        return (type(self), ())

    def replicas_needed(self, n: int) -> int:  # noqa: ARG002 - only this replica, whatever n
        """1: only this replica, whatever ``n``."""
        return 1


@dataclass(frozen=True, slots=True)
class _FromN:
    n: int
    timeout: float

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"{type(self).__name__} n must be an int >= 1, not {self.n!r}")
        _check_timeout(self.timeout)

    def replicas_needed(self, n: int) -> int:
        """The ``n`` this level asks for, or all ``n`` known replicas when there are fewer."""
        return min(self.n, n)


@dataclass(frozen=True, slots=True)
class _Majority:
    timeout: float
    min_cap: int = 0

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)

    def replicas_needed(self, n: int) -> int:
        """``min(n, max(n // 2 + 1, min_cap))``."""
        return majority(n, self.min_cap)


@dataclass(frozen=True, slots=True)
class _All:
    timeout: float

    def __post_init__(self) -> None:
        _check_timeout(self.timeout)

    def replicas_needed(self, n: int) -> int:
        """Every one of the ``n`` known replicas."""
        return n


@dataclass(frozen=True, slots=True)
class ReadLocal(_Local, ReadConsistency):
    """Read this node's replica only."""


@dataclass(frozen=True, slots=True)
class ReadFrom(_FromN, ReadConsistency):
    """Read from ``n`` replicas (this one included; all of them if fewer) within ``timeout`` s."""


@dataclass(frozen=True, slots=True)
class ReadMajority(_Majority, ReadConsistency):
    """Read from a majority of the known replicas (at least ``min_cap``) within ``timeout`` s."""


@dataclass(frozen=True, slots=True)
class ReadAll(_All, ReadConsistency):
    """Read from every known replica within ``timeout`` s."""


@dataclass(frozen=True, slots=True)
class WriteLocal(_Local, WriteConsistency):
    """Apply locally and acknowledge; peers learn it by delta and gossip."""


# Thespian shows every message it sends and receives: an Update or a Get shows its level.
show_as(ReadLocal, "ReadLocal()")
show_as(WriteLocal, "WriteLocal()")


@dataclass(frozen=True, slots=True)
class WriteTo(_FromN, WriteConsistency):
    """Acknowledge once ``n`` replicas (this one included; all if fewer) have the write."""


@dataclass(frozen=True, slots=True)
class WriteMajority(_Majority, WriteConsistency):
    """Acknowledge once a majority of the known replicas (at least ``min_cap``) have it."""


@dataclass(frozen=True, slots=True)
class WriteAll(_All, WriteConsistency):
    """Acknowledge once every known replica has it."""


# -- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Get:
    """Read ``key``.  Replies: GetSuccess, NotFound, GetFailure, GetDataDeleted."""

    key: str
    consistency: ReadConsistency = field(default_factory=ReadLocal)
    request: Any = None

    def __reduce__(self) -> str | tuple[Any, ...]:
        # Its fields, not its dict: half the bytes, a third of the time.  A class of one's own
        # derived from Get, or a Get missing a field (a pickle of another version, a forged
        # one: the node refuses it) travels whole.
        fields = self.__dict__
        if type(self) is not Get or fields.keys() != _GET_FIELDS:
            newobj = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle's default form
            return (newobj, (type(self),), self.__getstate__())
        return (Get, (fields["key"], fields["consistency"], fields["request"]))

    def __str__(self) -> str:
        # Thespian shows each Get three times (see GetResponse): its fields short, as repr
        # shows the usual ones.
        return (
            f"Get(key={short(getattr(self, 'key', None))}, "
            f"consistency={short(getattr(self, 'consistency', None))}, "
            f"request={short(getattr(self, 'request', None))})"
        )


_GET_FIELDS = {"key", "consistency", "request"}

_LOADED: dict[bytes, Any] = {}
"""The modify function loaded from each blob that may be shared between Updates (see
:func:`_shareable`), or :data:`_FRESH` for a blob loaded afresh at each Update: clients send the
same few functions over and over, and telling whether one may be shared costs several loads."""

_FRESH = object()
_LOADED_MAX = 256


def _load_modify(blob: bytes) -> Any:
    """The function ``blob`` holds: loaded once when it keeps no state of its own between runs,
    else at each Update, so that each runs with what it captured as it was sent."""
    known = _LOADED.get(blob)
    if known is not None and known is not _FRESH:
        return known
    try:
        modify = dill.loads(blob)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{e}: modify refers to module {e.name!r} by name, and this node cannot import it "
            "(install it where the node runs, or define the function in the client's __main__, "
            "which travels by value)",
            name=e.name,
        ) from None
    if known is None:
        if len(_LOADED) >= _LOADED_MAX:
            _LOADED.clear()
        _LOADED[blob] = modify if _shareable(modify) else _FRESH
    return modify


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range)
_WRITES_STATE = frozenset({"STORE_DEREF", "DELETE_DEREF", "STORE_GLOBAL", "DELETE_GLOBAL"})


def _shareable(value: object, depth: int = 0) -> bool:
    """Whether one loaded copy of ``value`` (a modify, or what it refers to) may serve every
    Update that carries the same bytes: nothing a run does can change what the next run sees.
    A function found by its name is the node's own, shared like the rest of its module; one
    sent by value must hold only immutable values (closure cells, defaults, the globals it
    reads), and neither rebind a captured variable (``nonlocal``) nor a global."""
    if type(value) in _IMMUTABLE:
        return True
    if type(value) in (tuple, frozenset):
        return all(_shareable(v, depth) for v in value)  # type: ignore[attr-defined]
    if isinstance(value, ModuleType):
        return sys.modules.get(value.__name__) is value
    if isinstance(value, type):
        return _found_by_name(value)  # one from __main__ is made anew at each load
    return depth <= 4 and _shareable_callable(value, depth)


def _shareable_callable(value: object, depth: int) -> bool:
    """:func:`_shareable` for a function or a ``functools.partial``; anything else (a bound
    method, an object with ``__call__``) may hold any state."""
    if type(value) is partial:
        return not value.__dict__ and all(
            _shareable(v, depth + 1) for v in (value.func, value.args, *value.keywords.values())
        )
    if type(value) is not FunctionType:
        return False
    if _found_by_name(value):
        return True
    if value.__dict__ or _writes_state(value.__code__, frozenset(value.__code__.co_freevars)):
        return False
    try:
        cells = [cell.cell_contents for cell in value.__closure__ or ()]
    except ValueError:  # a cell not yet set
        return False
    read = [value.__globals__[name] for name in _names(value.__code__) if name in value.__globals__]
    defaults = (value.__defaults__, tuple((value.__kwdefaults__ or {}).values()))
    return all(_shareable(v, depth + 1) for v in (*cells, *read, *defaults))


def _writes_state(code: CodeType, free: frozenset[str]) -> bool:
    """Whether ``code`` (or code nested in it) rebinds a global or one of the ``free``
    variables its function captured."""
    for op in dis.get_instructions(code):
        if op.opname in _WRITES_STATE and (op.opname.endswith("GLOBAL") or op.argval in free):
            return True
    return any(_writes_state(c, free) for c in code.co_consts if isinstance(c, CodeType))


def _names(code: CodeType) -> set[str]:
    """The global names ``code`` (or code nested in it) may read."""
    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, CodeType):
            names |= _names(c)
    return names


def _save_module(pickler: dill.Pickler, module: ModuleType) -> None:
    """A module goes by name, as pickle sends a class or a function, unless it is ``__main__``
    (or not importable at all): dill's own rule also sends by value every module that is not
    under site-packages, the client's whole module dict, which may not pickle
    (``import thespian_dd as dd`` in a checkout: ``cannot pickle '_struct.Struct'``) and when
    it does, replaces the node's own module dict on load."""
    name = module.__name__
    if name == "__main__" or sys.modules.get(name) is not module:
        _DILL_SAVE_MODULE(pickler, module)
    else:
        pickler.save_reduce(importlib.import_module, (name,), obj=module)


_DILL_SAVE_MODULE = dill.Pickler.dispatch[ModuleType]


class _ModifyPickler(dill.Pickler):  # type: ignore[misc]
    """dill with :func:`_save_module`: what it writes, plain ``dill.loads`` reads."""

    dispatch = type(dill.Pickler.dispatch)(dill.Pickler.dispatch)
    dispatch[ModuleType] = _save_module


_PLAIN = (int, str, bytes, bool, type(None))
"""Immutable values whose pickle is a function of their type and equality alone (not floats:
0.0 == -0.0)."""

_SENT_BY_NAME: dict[object, tuple[tuple[object, object, object], bytes]] = {}
"""A cache of :func:`_dumps_modify`: the checked bytes of each function (or partial) that travels
by name, with the parts of it that the checks read (see :func:`_by_name_key`)."""

_SENT_BY_NAME_MAX = 1024


def _located(function: object) -> bool:
    """Whether ``function`` is a plain function that dill pickles by name (its module imported
    under its ``__module__``, its ``__qualname__`` naming it there): its bytes are then its
    module and name, nothing it refers to or captures."""
    return type(function) is FunctionType and _found_by_name(function)


def _found_by_name(thing: Any) -> bool:
    """Whether ``thing`` is what its ``__module__`` (imported, not ``__main__``) holds under
    its ``__qualname__``."""
    module = sys.modules.get(getattr(thing, "__module__", None) or "__main__")
    if module is None or module.__name__ == "__main__":
        return False
    found: object = module
    for part in thing.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is thing


def _plain(value: object) -> bool:
    return type(value) in _PLAIN or (type(value) is tuple and all(_plain(v) for v in value))


def _typed(value: object) -> object:
    """``value`` (plain) as a key that tells 1 and True apart, as their pickles do."""
    if type(value) is tuple:
        return (tuple, *(_typed(v) for v in value))
    return (type(value), value)


def _by_name_key(modify: object) -> tuple[object, tuple[object, object, object]] | None:
    """(cache key, what the checks read) of a ``modify`` whose dill bytes cannot change while
    the key is the same: a function sent by name, or a ``functools.partial`` of one with plain
    arguments (keyed by their types and values: a partial can be changed in place).  None for
    anything else (a lambda, a closure, a method, a partial of a mutable value): those are
    pickled each time, since what they capture may have changed since the last Update."""
    if type(modify) is partial:
        if modify.__dict__ or not _located(modify.func):
            return None
        args, keywords = modify.args, modify.keywords
        if not (_plain(args) and all(_plain(v) for v in keywords.values())):
            return None
        named = tuple(sorted((name, _typed(v)) for name, v in keywords.items()))
        key = (partial, modify.func, _typed(args), named)
        return key, _checked_parts(modify.func)
    if _located(modify):
        return modify, _checked_parts(modify)
    return None


def _checked_parts(function: Any) -> tuple[object, object, object]:
    """What the checks of :func:`_dumps_modify` read of a function: a cached result stands only
    while they are the same objects."""
    return (function.__code__, function.__defaults__, function.__kwdefaults__)


def _dumps_modify(modify: Callable[..., Any]) -> bytes:
    """``modify`` as the dill bytes the node loads; TypeError saying how to write it instead
    when it cannot travel or could not run there.  A function sent by name (and a partial of
    one with plain arguments) is pickled once: its bytes are its name, and what a client sends
    over and over cost 17 µs each time."""
    found = _by_name_key(modify)
    if found is not None:
        key, parts = found
        cached = _SENT_BY_NAME.get(key)
        if cached is not None:
            (code, defaults, kwdefaults), blob = cached
            if code is parts[0] and defaults is parts[1] and kwdefaults is parts[2]:
                return blob
    blob = _dumps_checked(modify)
    if found is not None:
        if len(_SENT_BY_NAME) >= _SENT_BY_NAME_MAX:
            _SENT_BY_NAME.clear()
        _SENT_BY_NAME[found[0]] = (found[1], blob)
    return blob


def _dumps_checked(modify: Callable[..., Any]) -> bytes:
    """``modify`` checked and pickled (see :func:`_dumps_modify`)."""
    what = getattr(modify, "__qualname__", None) or type(modify).__name__
    if not callable(modify):
        raise TypeError(f"modify must be callable (current, node) -> new, not {what}")
    if inspect.iscoroutinefunction(modify) or inspect.isasyncgenfunction(modify):
        raise TypeError(
            f"modify {what} is an async function: the node calls modify and uses what it "
            "returns, so it must be a plain function (current, node) -> new"
        )
    try:
        inspect.signature(modify).bind(None, None)
    except TypeError as e:
        raise TypeError(
            f"modify {what} must take two arguments (current, node), and cannot: {e}"
        ) from None
    except ValueError:  # no signature to read (some builtins): the node will tell
        pass
    out = io.BytesIO()
    try:
        _ModifyPickler(out, recurse=True).dump(modify)
    except Exception as e:  # whatever pickling trips on is the caller's to fix
        raise TypeError(
            f"modify {what} cannot be sent to the node: {type(e).__name__}: {e}. It travels "
            "pickled (with dill), by value when it is defined in __main__ or is a lambda or a "
            "closure, together with the values it refers to; by name when it is a function of "
            "an importable module. Make it refer only to plain data (str, numbers, tuples, "
            "dicts, your own importable classes) and to names the node can import: take what "
            "you need out of an object such as a database connection, a socket or a "
            "generator before making the Update, and use that instead."
        ) from e
    return out.getvalue()


def _load_update(
    key: Any, initial: Any, modify_blob: bytes, consistency: Any, request: Any
) -> Update:
    """An :class:`Update` as it travels (and as every release since the first sends it)."""
    update = Update.__new__(Update)
    _set_key(update, key)
    _set_initial(update, initial)
    _set_modify(update, None)
    _set_modify_blob(update, modify_blob)
    _set_consistency(update, consistency)
    _set_request(update, request)
    return update


class _Empty:
    """Pickles as the empty value of a built-in ``data_type``, made anew where it is loaded
    (``GCounter()``): the value most Updates start from, which pickled field by field took
    twice the bytes and four times the time to load.  Any release loads the same value."""

    __slots__ = ("data_type",)

    def __init__(self, data_type: type) -> None:
        self.data_type = data_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.data_type, ())


def _empty_values() -> dict[type, tuple[tuple[Any, ...], _Empty]]:
    """The built-in types that have an empty value (made without arguments), with that value's
    state (``_state()``: equal values have equal states) and the :class:`_Empty` it travels as."""
    empty = {}
    for data_type in BUILT_IN:
        try:
            empty[data_type] = (data_type()._state(), _Empty(data_type))
        except TypeError:  # needs a value to start from (LWWRegister)
            continue
    return empty


_EMPTY = _empty_values()
"""An Update's ``initial`` equal to the empty value of its type travels as :class:`_Empty`."""


class Update:
    """Set ``key`` to ``modify(current, node)``; current is the stored value or ``initial``.

    ``modify`` runs inside the Replicator and receives the node's :class:`ReplicaId`, which the
    data type's mutators take: ``Update("hits", GCounter(), lambda c, node: c.increment(node))``.
    It may be a lambda, a closure, a nested function, a function or a method of ``__main__``,
    a ``functools.partial`` or a function of a module the node can import: it is pickled
    with dill here, when the Update is made, so one that cannot travel raises
    :class:`TypeError` at once, saying why (and the node runs the function as it was then).
    If it raises, or returns a value of another type, the reply is ``ModifyFailure`` and nothing
    is applied.  Replies: UpdateSuccess, UpdateTimeout, ModifyFailure, StoreFailure,
    UpdateDataDeleted.
    """

    __slots__ = ("_modify", "_modify_blob", "consistency", "initial", "key", "request")

    key: Any
    initial: Any
    consistency: Any
    request: Any
    _modify: Any
    _modify_blob: bytes

    def __init__(
        self,
        key: str,
        initial: ReplicatedData,
        modify: Callable[[Any, ReplicaId], Any],
        consistency: WriteConsistency | None = None,
        request: Any = None,
    ) -> None:
        if getattr(type(initial), "__module__", None) == "__main__":
            raise TypeError(
                f"initial is a {type(initial).__qualname__} defined in __main__, which the node "
                "cannot import: define your data type in a module the node imports (see "
                "register_data_type)"
            )
        _set_key(self, key)
        _set_initial(self, initial)
        _set_modify(self, modify)
        _set_modify_blob(self, _dumps_modify(modify))
        _set_consistency(self, _WRITE_LOCAL if consistency is None else consistency)
        _set_request(self, request)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Update is immutable")

    def with_request(self, request: Any) -> Update:
        """This Update with ``request`` as its tag (``modify`` is not pickled again)."""
        copy = object.__new__(Update)
        for name in Update.__slots__:
            object.__setattr__(copy, name, getattr(self, name))
        object.__setattr__(copy, "request", request)
        return copy

    def __reduce__(self) -> tuple[Any, ...]:
        # Thespian pickles messages with plain pickle, which cannot carry a lambda or a closure
        # from __main__: dill can, by value.
        initial = self.initial
        empty = _EMPTY.get(type(initial))  # a built-in type: equal when their states are
        if empty is not None and initial._state() == empty[0]:
            initial = empty[1]
        args = (self.key, initial, self._modify_blob, self.consistency, self.request)
        return (_load_update, args)

    @property
    def modify(self) -> Callable[[Any, ReplicaId], Any]:
        """The modify function (loaded from its dill bytes on first use after a transfer)."""
        if self._modify is None:
            object.__setattr__(self, "_modify", _load_modify(self._modify_blob))
        modify: Callable[[Any, ReplicaId], Any] = self._modify
        return modify

    def __repr__(self) -> str:
        return (
            f"Update(key={self.key!r}, initial={self.initial!r}, consistency={self.consistency!r}"
            f", request={self.request!r})"
        )

    def __str__(self) -> str:
        # As shown() would (see GetResponse), written out: Thespian shows each Update three times.
        return (
            f"Update(key={short(self.key)}, initial={short(self.initial)}, "
            f"consistency={short(self.consistency)}, request={short(self.request)})"
        )


# Each field of an Update set straight through its slot (Update.__setattr__ refuses): a third of
# the time object.__setattr__ takes to find the slot by name, in an Update made or received.
(
    _set_key,
    _set_initial,
    _set_modify,
    _set_modify_blob,
    _set_consistency,
    _set_request,
) = (
    Update.__dict__[name].__set__
    for name in ("key", "initial", "_modify", "_modify_blob", "consistency", "request")
)
_WRITE_LOCAL = WriteLocal()


@dataclass(frozen=True)
class Delete:
    """Delete ``key`` everywhere (a tombstone that wins every merge).

    Replies: DeleteSuccess, DataDeleted, ReplicationDeleteFailure, StoreFailure.
    """

    key: str
    consistency: WriteConsistency = field(default_factory=WriteLocal)
    request: Any = None


@dataclass(frozen=True)
class Subscribe:
    """Send ``Changed`` (and ``Deleted``) for ``key`` to ``subscriber`` (default: the sender).

    ``key`` may end in ``*`` to subscribe to every key with that prefix.  A new subscriber first
    receives the current value of each matching key that exists.
    """

    key: str
    subscriber: Any = None


@dataclass(frozen=True)
class Unsubscribe:
    """Stop sending changes of ``key`` (the same string as subscribed) to ``subscriber``."""

    key: str
    subscriber: Any = None


@dataclass(frozen=True)
class FlushChanges:
    """Notify subscribers of pending changes now instead of at the next notify interval."""


@dataclass(frozen=True)
class GetKeys:
    """Ask for the keys this node holds.  Reply: Keys."""

    request: Any = None


@dataclass(frozen=True)
class GetReplicaCount:
    """Ask how many replicas (this one included) are known and reachable.  Reply: ReplicaCount."""

    request: Any = None


@dataclass(frozen=True)
class GetStats:
    """Ask for counters about this node's Replicator.  Reply: Stats."""

    request: Any = None


@dataclass(frozen=True)
class GetStatus:
    """Ask what an operator needs to see of this node: its peers, its keys' sizes, its store.
    Reply: :class:`Status`, also while the node is still loading its store (then ``serving``
    is False).  Costs one encoding of every value: for a status view, not for polling."""

    largest: int = 5
    """How many of the largest keys to name."""
    request: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.largest, int) or isinstance(self.largest, bool) or self.largest < 0:
            raise ValueError(f"largest must be an int >= 0, not {self.largest!r}")


# -- replies ------------------------------------------------------------------------------------


class _Reply:
    """The replies to Get, Update and Delete travel as their class and their fields in order:
    ``UpdateSuccess("k", None)`` in 52 bytes where pickle's own form (the class, then a dict of
    the fields by name) took 86, and in about half the time each way.  A reply of every earlier
    release is read (pickle's own form), and reads this form: it calls the class with the same
    fields in the same order.  A class of one's own derived from a reply, or a reply missing a
    field, travels in pickle's own form."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        kind = type(self)
        known = _REPLY_FIELDS.get(kind)
        state = self.__dict__
        if known is None or state.keys() != known[0]:
            newobj = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle's default form
            return (newobj, (kind,), self.__getstate__())
        return (kind, known[1](state))


_REPLY_FIELDS: dict[type, tuple[frozenset[str], Callable[[dict[str, Any]], tuple[Any, ...]]]] = {}
"""Each reply class of this module: its fields' names, and what reads their values in order."""


@dataclass(frozen=True)
class GetResponse(_Reply):
    """The replies to :class:`Get`: each echoes the request's ``key`` and ``request``."""

    key: str
    request: Any

    def __str__(self) -> str:
        return shown(self)  # Thespian formats every message it sends: not the whole value


@dataclass(frozen=True)
class GetSuccess(GetResponse):
    """``key`` holds ``data``: the CRDT (its plain value is ``data.value``)."""

    data: Any


@dataclass(frozen=True)
class NotFound(GetResponse):
    """No replica asked holds ``key``."""


@dataclass(frozen=True)
class GetFailure(GetResponse):
    """The read could not reach enough replicas in time (or the request was invalid)."""

    error: str = ""


@dataclass(frozen=True)
class GetDataDeleted(GetResponse):
    """``key`` was deleted."""


@dataclass(frozen=True)
class UpdateResponse(_Reply):
    """The replies to :class:`Update`: each echoes the request's ``key`` and ``request``."""

    key: str
    request: Any


@dataclass(frozen=True)
class UpdateSuccess(UpdateResponse):
    """The update is applied (with a store in ``sync`` mode, committed) and confirmed by as many
    replicas as its consistency asks."""


@dataclass(frozen=True)
class UpdateTimeout(UpdateResponse):
    """Applied locally, but not confirmed by enough replicas in time (it will still spread)."""


@dataclass(frozen=True)
class ModifyFailure(UpdateResponse):
    """Nothing was applied: the request was invalid, or modify raised or returned a wrong type."""

    error: str


@dataclass(frozen=True)
class StoreFailure(UpdateResponse):
    """Applied in memory but not durably stored (replies to Update and Delete)."""

    error: str = ""


@dataclass(frozen=True)
class UpdateDataDeleted(UpdateResponse):
    """``key`` was deleted: nothing was applied."""


@dataclass(frozen=True)
class DeleteResponse(_Reply):
    """The replies to :class:`Delete`: each echoes the request's ``key`` and ``request``."""

    key: str
    request: Any


@dataclass(frozen=True)
class DeleteSuccess(DeleteResponse):
    """``key`` is deleted (with a store in ``sync`` mode, committed) and confirmed by as many
    replicas as the consistency asks."""


@dataclass(frozen=True)
class DataDeleted(DeleteResponse):
    """The key was already deleted."""


@dataclass(frozen=True)
class ReplicationDeleteFailure(DeleteResponse):
    """Deleted locally but not confirmed by enough replicas in time, or the request was invalid."""

    error: str = ""


def _reply_fields(kind: type) -> None:
    names = tuple(f.name for f in fields(kind))
    _REPLY_FIELDS[kind] = (frozenset(names), itemgetter(*names))


for _family in (GetResponse, UpdateResponse, DeleteResponse):
    _reply_fields(_family)
    for _kind in _family.__subclasses__():
        _reply_fields(_kind)


@dataclass(frozen=True)
class Changed:
    """To subscribers: ``key`` now holds ``data``."""

    key: str
    data: Any

    def __str__(self) -> str:
        return shown(self)  # Thespian formats every message it sends: not the whole value


@dataclass(frozen=True)
class Deleted:
    """To subscribers: ``key`` was deleted."""

    key: str


@dataclass(frozen=True)
class Expired:
    """To subscribers: ``key`` was removed after a period of inactivity (see the setting
    ``expire_keys_after_inactivity``); unlike a delete, it may be created again."""

    key: str


@dataclass(frozen=True)
class Keys:
    """The reply to :class:`GetKeys`: every key this node holds."""

    keys: frozenset[str]
    request: Any = None

    def __str__(self) -> str:
        return shown(self)  # Thespian formats every message it sends: not every key


@dataclass(frozen=True)
class ReplicaCount:
    """The reply to :class:`GetReplicaCount`: ``n`` replicas known and reachable, this one
    included (0 while the node loads its store)."""

    n: int
    request: Any = None


@dataclass(frozen=True)
class Stats:
    """Counters of one Replicator, the reply to :class:`GetStats`.

    - ``node``: this replica's :class:`~thespian_dd.ReplicaId` as text, ``name#incarnation``.
    - ``keys``: the keys this node holds.
    - ``peers`` and ``reachable_peers``: the other nodes known, and those of them reachable now.
    - ``gossip_bytes_in`` / ``gossip_bytes_out``: the digests, keys and values gossip carried;
      ``gossip_rounds``: the gossip rounds so far.
    - ``subscribers``: the subscriptions held.
    - ``rejected_inputs``: bad requests, peer payloads and stored rows refused.
    - ``refused_rows`` (a durable node): stored rows refused since the last load: checksum or
      MAC, format version, and decoding, which happens when a value is first used or in the
      slices after the load, so a row that does not decode is counted then (until then it
      counts in ``keys``).
    - ``store_queue_depth``: keys not yet committed to the store.
    - ``last_flush``: the time (``time.time()``) of the last commit.
    - ``recovery_time``: seconds from asking the store for its rows to serving.
    - ``store_failures``: failed commits so far; ``store_error``: the last failure, ``None``
      once a commit succeeds (while the store cannot be loaded: why).
    - ``serving``: False while the node loads its store (or cannot): the other figures are then
      partial.  ``GetStats`` is answered at once, loading or not.
    - ``incompatible_peers``: nodes this one cannot talk to (no protocol or codec format version
      in common, see the upgrade procedure in the operations guide), each as ``"name: why"``.
    """

    node: str
    keys: int
    peers: int
    gossip_bytes_in: int
    gossip_bytes_out: int
    store_queue_depth: int
    last_flush: float | None
    recovery_time: float | None
    rejected_inputs: int
    subscribers: int
    reachable_peers: int = 0
    gossip_rounds: int = 0
    store_failures: int = 0
    store_error: str | None = None
    refused_rows: int = 0
    serving: bool = True
    incompatible_peers: tuple[str, ...] = ()
    request: Any = None


@dataclass(frozen=True)
class PeerStatus:
    """One peer of a node, as the node sees it (see :class:`Status`)."""

    name: str
    replica: str
    """Its current ``ReplicaId`` (``name#incarnation``)."""
    address: str
    reachable: bool
    last_heard: float
    """Seconds since this node last heard from it."""
    versions: str = ""
    """The protocol and codec format versions it announced (empty: none yet; ``protocol 1,
    format 1`` for a node of the first release) and, after ``->``, those the pair uses."""


@dataclass(frozen=True)
class Status:
    """The reply to :class:`GetStatus`."""

    node: str
    """This node's current ``ReplicaId`` (``name#incarnation``)."""
    serving: bool
    """Whether it serves requests (False while it loads its store, or cannot)."""
    loaded_rows: int
    """Rows read from the store so far (while loading; all of them after)."""
    peers: tuple[PeerStatus, ...]
    removed: tuple[str, ...]
    """Replicas removed for good (unreachable longer than ``removal_timeout``)."""
    keys: int
    tombstones: int
    value_bytes: int
    """The encoded size of every value together."""
    largest: tuple[tuple[str, int], ...]
    """The largest keys with their encoded sizes, largest first."""
    store: str | None
    """The store's URL without its password (None: in memory)."""
    write_mode: str
    store_queue_depth: int
    last_flush: float | None
    store_error: str | None
    recovery_time: float | None
    incompatible_peers: tuple[str, ...] = ()
    """As in :class:`Stats`."""
    request: Any = None


@dataclass(frozen=True)
class InvalidRequest:
    """A message the Replicator does not understand, or a request without a family of replies
    whose fields are wrong.  Nothing was changed."""

    message_type: str
    error: str
    request: Any = None
