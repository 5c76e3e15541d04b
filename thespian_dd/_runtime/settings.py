"""The Replicator's settings: one table, each with its default and its check.

A setting comes from the caller of :func:`thespian_dd.start` or from the ActorSystem's
``thespian_dd.<setting>`` capabilities (how the node command and peers that create a Replicator to
introduce themselves pass them).  A bad value is refused with a sentence naming it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from thespian_dd._runtime.checks import describe, seconds

__all__ = ["CAPABILITY_PREFIX", "WRITE_MODES", "Settings", "matches"]

CAPABILITY_PREFIX = "thespian_dd."
"""Settings can be given as ActorSystem capabilities named ``thespian_dd.<setting>``."""

WRITE_MODES = ("sync", "write-behind")


@dataclass(frozen=True)
class Settings:
    """The Replicator's settings, each with its default; one bullet per field, in field order
    (the documentation's settings table is made from these).

    - ``node_name``: this node's name in every ReplicaId it writes; unique in the cluster.
      ``None``: the ``thespian_dd.node_name`` capability, else ``host:admin-port``.
    - ``notify_interval``: seconds between notifications of changes to subscribers
      (``FlushChanges`` notifies at once).
    - ``gossip_interval``: seconds between gossip rounds (each sends a status to a few peers).
    - ``delta_interval``: seconds between delta propagations, each to a few peers in turn, so
      that every peer gets each change within half a ``gossip_interval``; 0 turns deltas off
      (gossip only).
    - ``failure_timeout``: seconds without a word from a peer before it counts as unreachable.
      On the multiprocess base, the Replicator's process (and its DurableWriter's) also closes
      a connection unused for three of these (at least 30 s; the next message reopens it).
    - ``max_value_bytes``: the largest encoded value accepted from a peer, or kept after merging
      one.
    - ``max_gossip_bytes``: the budget of values in one gossip message.
    - ``store``: an SQLAlchemy URL (``sqlite:///path``), or ``file:PATH`` naming a file whose first
      line is the URL (read where the store is opened: a password stays out of capabilities);
      ``None`` keeps the data in memory only.
    - ``signing_key_file``: with a store, a file holding a secret key: every stored row is then
      signed (HMAC-SHA256) and a row that does not verify is refused at load.  A path, not the
      key: settings travel to other nodes as capabilities; the DurableWriter reads the file.
    - ``durable_keys``: with a store, the keys that persist: exact keys or ``prefix*`` patterns.
    - ``write_mode``: ``"sync"`` (acknowledge after commit) or ``"write-behind"`` (acknowledge at
      once, commit every ``write_behind_interval`` seconds and on a graceful stop).
    - ``write_behind_interval``: seconds between write-behind commits.
    - ``removal_timeout``: seconds a peer may stay unreachable before it is removed for good (by
      a side holding a majority): it no longer counts in N, and its replicas are pruned.
    - ``pruning_interval``: seconds between pruning rounds.
    - ``max_pruning_dissemination``: seconds a replica must have been seen removed before pruning
      of it starts.
    - ``pruning_marker_ttl``: seconds a performed-pruning marker is kept, for keys in memory.
    - ``durable_pruning_marker_ttl``: the same for durable keys; also the longest a durable node
      may be offline and rejoin with its store (longer, it must be forgotten first:
      ``thespian-dd forget-node``, and it rejoins empty).
    - ``expire_keys_after_inactivity``: ``{key or 'prefix*': seconds}``; such a key is removed
      (no tombstone; subscribers get ``Expired``) once nobody has updated or read it for that
      long on any node.
    - ``test_partitions``: TEST ONLY: obey ``PartitionForTests`` (which cuts this node off from
      the peers it names).  Off by default, and then the message is refused and counted.
    - ``data_types``: modules to import before anything is read: those that register data types
      of one's own (see :func:`~thespian_dd.register_data_type`).
    """

    node_name: str | None = None
    notify_interval: float = 0.5
    gossip_interval: float = 2.0
    delta_interval: float = 0.2
    failure_timeout: float = 10.0
    max_value_bytes: int = 16 * 1024 * 1024
    max_gossip_bytes: int = 512 * 1024
    store: str | None = None
    signing_key_file: str | None = None
    durable_keys: tuple[str, ...] = ("*",)
    write_mode: str = "sync"
    write_behind_interval: float = 1.0
    removal_timeout: float = 300.0
    pruning_interval: float = 120.0
    max_pruning_dissemination: float = 300.0
    pruning_marker_ttl: float = 6 * 3600.0
    durable_pruning_marker_ttl: float = 10 * 86400.0
    expire_keys_after_inactivity: Mapping[str, float] = field(default_factory=dict)
    test_partitions: bool = False
    data_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.node_name is not None and (
            not isinstance(self.node_name, str) or not self.node_name
        ):
            raise ValueError(f"node_name must be a non-empty str, not {self.node_name!r}")
        for name in (
            "notify_interval",
            "gossip_interval",
            "failure_timeout",
            "write_behind_interval",
            "pruning_interval",
            "pruning_marker_ttl",
            "durable_pruning_marker_ttl",
        ):
            _check_positive(name, getattr(self, name))
        # Only compared with: infinity means never (never remove a peer, never prune).
        for name in ("removal_timeout", "max_pruning_dissemination"):
            _check_positive(name, getattr(self, name), finite=False)
        if self.delta_interval != 0 or isinstance(self.delta_interval, bool):
            _check_positive("delta_interval", self.delta_interval)
        if self.store is not None and (not isinstance(self.store, str) or not self.store):
            raise ValueError(f"store must be an SQLAlchemy URL or None, not {self.store!r}")
        if self.signing_key_file is not None and (
            not isinstance(self.signing_key_file, str) or not self.signing_key_file
        ):
            raise ValueError(
                f"signing_key_file must be a file's path or None, not {self.signing_key_file!r}"
            )
        # From a capability or a caller: a list becomes a tuple, any mapping a dict.
        object.__setattr__(self, "durable_keys", _patterns(self.durable_keys))
        object.__setattr__(
            self, "expire_keys_after_inactivity", _expiries(self.expire_keys_after_inactivity)
        )
        # Imported here, where the Replicator takes its settings: before it reads its store.
        object.__setattr__(self, "data_types", _imported(self.data_types))
        self._check_choices()
        for name in ("max_value_bytes", "max_gossip_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")

    def _check_choices(self) -> None:
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode must be one of {WRITE_MODES}, not {self.write_mode!r}")
        if not isinstance(self.test_partitions, bool):
            raise ValueError(  # noqa: TRY004 - every bad setting is a ValueError
                f"test_partitions must be True or False, not {self.test_partitions!r}"
            )

    def is_durable(self, key: str) -> bool:
        """Whether ``key`` persists (given a store): it matches one of ``durable_keys``."""
        return self.store is not None and any(matches(p, key) for p in self.durable_keys)

    def expiry(self, key: str) -> float | None:
        """Seconds of inactivity after which ``key`` expires (an exact key before the longest
        matching prefix), or None."""
        rules = self.expire_keys_after_inactivity
        if not rules:  # the common case, asked for every key a load restores
            return None
        if key in rules:
            return rules[key]
        matching = [p for p in rules if p.endswith("*") and key.startswith(p[:-1])]
        return rules[max(matching, key=len)] if matching else None

    def marker_ttl(self, key: str) -> float:
        """Seconds a performed-pruning marker of ``key`` is kept."""
        if self.is_durable(key):
            return self.durable_pruning_marker_ttl
        return self.pruning_marker_ttl

    def conflict(self, asked: Mapping[str, Any]) -> str | None:
        """Why a caller asking for the settings ``asked`` cannot have this running Replicator:
        an unknown name, or a value other than the running one (None: it can)."""
        unknown = set(asked) - self.names()
        if unknown:
            return f"unknown thespian_dd setting(s) {sorted(unknown)}"
        running = asdict(self)
        clash = {
            k: v for k, v in asked.items() if running[k] != (tuple(v) if isinstance(v, list) else v)
        }
        if clash:
            return (
                f"the Replicator is already running with other settings: asked {clash}, "
                f"running { ({k: running[k] for k in clash}) }"
            )
        return None

    @classmethod
    def names(cls) -> frozenset[str]:
        """The name of every setting."""
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from keyword arguments; an unknown name is an error listing the known ones."""
        unknown = set(values) - cls.names()
        if unknown:
            raise TypeError(
                f"unknown thespian_dd setting(s) {sorted(unknown)}; known: {sorted(cls.names())}"
            )
        return cls(**values)

    @classmethod
    def from_capabilities(cls, capabilities: Mapping[str, Any]) -> dict[str, Any]:
        """The settings given as ``thespian_dd.<name>`` capabilities of the ActorSystem."""
        return {
            name[len(CAPABILITY_PREFIX) :]: value
            for name, value in capabilities.items()
            if isinstance(name, str) and name.startswith(CAPABILITY_PREFIX)
        }


def _patterns(patterns: object) -> tuple[str, ...]:
    if isinstance(patterns, (list, tuple)) and all(isinstance(p, str) and p for p in patterns):
        return tuple(patterns)
    raise ValueError(f"durable_keys must be a list of keys or 'prefix*' patterns, not {patterns!r}")


def _imported(modules: object) -> tuple[str, ...]:
    if not (isinstance(modules, (list, tuple)) and all(isinstance(m, str) and m for m in modules)):
        raise ValueError(f"data_types must be a list of module names, not {modules!r}")
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - whatever the import raises, said in one line
            raise ValueError(
                f"data_types must name modules this process can import: {module!r}: {describe(e)}"
            ) from None
    return tuple(modules)


def _expiries(rules: object) -> dict[str, float]:
    if isinstance(rules, Mapping) and all(
        isinstance(k, str) and k and (seconds(v) or 0) > 0 for k, v in rules.items()
    ):
        return dict(rules)
    raise ValueError(
        f"expire_keys_after_inactivity must map keys or 'prefix*' patterns to seconds > 0, "
        f"not {rules!r}"
    )


def _check_positive(name: str, value: object, *, finite: bool = True) -> None:
    # Finite unless told: a timer's delay or a marker's lifetime in ms must be.
    number = seconds(value)
    if number is None or not number > 0 or (finite and not math.isfinite(number)):
        raise ValueError(f"{name} must be seconds > 0, not {value!r}")


def matches(pattern: str, key: str) -> bool:
    """Whether ``key`` is ``pattern``, or starts with it when it ends in ``*``."""
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern
