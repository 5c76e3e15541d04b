"""How messages show as text (``str``), for Thespian's log lines.

Thespian formats every message it sends or receives, ``str(message)`` cut to a few hundred
characters afterwards, for a debug line whether it is logged or not.  A message that carries a
value, bytes or a large collection would be formatted whole each time: a ``GetSuccess`` of a
100,000-element ORSet took 80 ms to format on the Replicator, and as long again on the client.
So such a message shows its fields with each value as its type, bytes as their size, and a
collection of more than a few items as its size.  ``repr`` stays whole, for debugging.

Formatting is paid twice per message (by the sender and by the receiver), on every ``Update``
and every reply, so the usual fields (a short str, an int, None) take ``repr`` at once rather
than ``reprlib``'s dispatch: an ``Update`` showed in 8 µs that way, against 0.5 µs for the
message of a Thespian echo.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any

from thespian_dd.data import ReplicatedData

__all__ = ["short", "show_as", "shown"]

_FEW = 4
"""A collection of more items shows as its size: ``reprlib`` would sort the items first."""

_LONG = 80
"""The longest a str shows whole (``reprlib`` cuts a longer one in the middle)."""


_INT_BITS = 256
"""A bigger int shows as its size."""


class _Short(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = self.maxother = _LONG

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, ReplicatedData):
            return f"<{type(x).__name__}>"
        if isinstance(x, (bytes, bytearray, memoryview)):
            return f"<{len(x)} bytes>"
        if isinstance(x, (dict, list, tuple, set, frozenset)) and len(x) > _FEW:
            return f"<{type(x).__name__} of {len(x)}>"
        if isinstance(x, int) and x.bit_length() > _INT_BITS:
            # reprlib writes every digit first, and Python refuses more than 4,300 of them.
            return f"<int of {x.bit_length()} bits>"
        return super().repr1(x, level)


_SHORT = _Short()
_WHOLE = (bool, type(None), float)
"""Types whose ``repr`` is short whatever the value."""
_FIELDS: dict[type, tuple[str, ...]] = {}
_CONSTANT: dict[type, str] = {}
"""Types whose every instance shows the same: each value type met (as ``<ORSet>``), and those
given to :func:`show_as`.  Found by type at once, where ``isinstance`` against the abstract
:class:`~thespian_dd.data.ReplicatedData` and ``reprlib``'s dispatch took most of the time an
``Update`` took to show."""

_CONSTANT_MAX = 256


def show_as(kind: type, text: str) -> None:
    """Every instance of ``kind`` (exactly) shows as ``text``: for a class whose instances
    have no fields, such as ``WriteLocal``."""
    _CONSTANT[kind] = text


def short(x: Any) -> str:
    """``x`` shown short: as ``repr`` when that is short, else as described in the module."""
    kind = type(x)
    if (
        (kind is str and len(x) <= _LONG)
        or kind in _WHOLE
        or (kind is int and -(2**63) <= x < 2**63)
    ):
        return repr(x)
    constant = _CONSTANT.get(kind)
    if constant is not None:
        return constant
    if isinstance(x, ReplicatedData):
        if len(_CONSTANT) < _CONSTANT_MAX:
            _CONSTANT[kind] = f"<{kind.__name__}>"
        return f"<{kind.__name__}>"
    return _SHORT.repr(x)


def shown(message: Any, fields: tuple[str, ...] | None = None) -> str:
    """``message`` as ``Name(field=value, ...)`` with each value shown short (see the module);
    ``fields``: its fields' names, when it is not a dataclass."""
    if fields is None:
        kind = type(message)
        fields = _FIELDS.get(kind)
        if fields is None:
            fields = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(message))
    parts = ", ".join([f"{name}={short(getattr(message, name, None))}" for name in fields])
    return f"{type(message).__name__}({parts})"
