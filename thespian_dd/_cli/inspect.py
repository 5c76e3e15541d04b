"""``python -m thespian_dd inspect``: what a store holds, for operators.  Reads only."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from thespian_dd import codec
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._runtime.markers import split_envelope
from thespian_dd._runtime.rows import DELETED, StoredRow
from thespian_dd._runtime.store import Store

__all__ = ["inspect_store"]

WIDTH = 60
"""Values longer than this are cut in the table (``--key`` prints them whole)."""


def inspect_store(
    url: str,
    node: str | None,
    key: str | None,
    out: Callable[[str], object],
    *,
    signing_key: bytes | None = None,
) -> int:
    """Print the nodes of the store at ``url`` and their rows (each verified with
    ``signing_key``, if given, as the nodes load them); returns the exit status (1 if nothing
    matched).  Raises :class:`~thespian_dd._runtime.database.StoreError` if it cannot be read."""
    store = Store(url, read_only=True, signing_key=signing_key)
    try:
        nodes = [n for n in store.nodes() if node is None or n[0] == node]
        if not nodes:
            out(f"no node {node!r} in this store" if node else "this store holds no node yet")
            return 1
        found = 0
        for name, incarnation, schema in nodes:
            rows = list(store.rows(name, key))
            found += len(rows)
            out(f"node {name}: incarnation {incarnation}, schema {schema}, {len(rows)} rows")
            if key is not None:
                for row in rows:
                    _detail(row, out)
                continue
            out(f"  {'key':<24} {'type':<14} {'bytes':>9}  {'updated at (UTC)':<19}  value")
            for row in rows:
                value = _value(row)
                if len(value) > WIDTH:
                    value = value[: WIDTH - 3] + "..."
                out(
                    f"  {row.key:<24} {row.data_type:<14} {len(row.payload):>9,}  "
                    f"{_when(row.updated_at)}  {value}"
                )
        if key is not None and not found:
            out(f"no key {key!r} stored" + (f" by node {node!r}" if node else ""))
            return 1
        return 0
    finally:
        store.close()


def _detail(row: StoredRow, out: Callable[[str], object]) -> None:
    out(f"  key:            {row.key}")
    out(f"  type:           {row.data_type} (format version {row.format_version})")
    out(f"  bytes:          {len(row.payload):,}")
    out(f"  updated at:     {_when(row.updated_at)} UTC")
    out(f"  replicas:       {row.replicas or '-'}")
    out(f"  value:          {_value(row)}")


def _value(row: StoredRow) -> str:
    if row.error is not None:
        return f"UNREADABLE: {row.error} (skipped on load)"
    if row.data_type == DELETED:
        return "(deleted)"
    try:
        markers, raw = split_envelope(row.payload, Limits())
        value = _shown(codec.decode(raw).value)
    except CodecError as e:
        return f"UNREADABLE: {e} (skipped on load)"
    return f"{value}  (pruning markers: {len(markers)})" if markers else value


def _shown(value: object) -> str:
    """``repr`` with the members of sets in a stable order (a set's own order is not)."""
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_shown(v) for v in value)) + "}"
    if isinstance(value, dict):
        items = sorted((_shown(k), _shown(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    return repr(value)


def _when(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
