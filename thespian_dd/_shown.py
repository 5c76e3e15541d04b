"""How a message shows as text (``str``), for Thespian's log lines.

Thespian formats every message it sends or receives, ``str(message)`` cut to a few hundred
characters afterwards, for a debug line whether it is logged or not.  A message that carries a
value, bytes or a large collection would be formatted whole each time: a ``GetSuccess`` of a
100,000-element ORSet took 80 ms to format on the Replicator, and as long again on the client.
So such a message shows its fields with each value as its type, bytes as their size, and a
collection of more than a few items as its size.  ``repr`` stays whole, for debugging.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import Any

from thespian_dd.data import ReplicatedData

__all__ = ["shown"]

_FEW = 4
"""A collection of more items shows as its size: ``reprlib`` would sort the items first."""


class _Short(reprlib.Repr):
    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = self.maxother = 80

    def repr1(self, x: Any, level: int) -> str:
        if isinstance(x, ReplicatedData):
            return f"<{type(x).__name__}>"
        if isinstance(x, (bytes, bytearray, memoryview)):
            return f"<{len(x)} bytes>"
        if isinstance(x, (dict, list, tuple, set, frozenset)) and len(x) > _FEW:
            return f"<{type(x).__name__} of {len(x)}>"
        return super().repr1(x, level)


_SHORT = _Short()


def shown(message: Any, fields: tuple[str, ...] | None = None) -> str:
    """``message`` as ``Name(field=value, ...)`` with each value shown short (see the module);
    ``fields``: its fields' names, when it is not a dataclass."""
    if fields is None:
        fields = tuple(f.name for f in dataclasses.fields(message))
    parts = ", ".join(f"{name}={_SHORT.repr(getattr(message, name, None))}" for name in fields)
    return f"{type(message).__name__}({parts})"
