"""The type parameters of the generic data types (``ORSet[A]``, ``ORMap[K, D]``, ...).

Each defaults to ``Any`` (PEP 696), so an unparameterised ``ORSet()`` checks as it always did.
They exist for type checkers only: at run time an ``ORSet[str]()`` is an ``ORSet``.
"""

from __future__ import annotations

from typing import Any

from typing_extensions import TypeVar

from thespian_dd.data import ReplicatedData

__all__ = ["A", "B", "D", "K", "V"]

A = TypeVar("A", default=Any)
"""What a set or a register holds."""
B = TypeVar("B")
"""The value of a new write (a register's type may change with it)."""
K = TypeVar("K", default=Any)
"""The keys of a map."""
V = TypeVar("V", default=Any)
"""The plain values of a map (an LWWMap's values, the elements of an ORMultiMap's sets)."""
D = TypeVar("D", bound=ReplicatedData, default=Any)
"""The data type of an ORMap's values."""
