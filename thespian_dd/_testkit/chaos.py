"""A chaos harness: a recorded workload under a seeded schedule of faults, then a full check.

The workload inserts unique elements into ORSets and increments GCounters, through many keys,
from a client on every live node; every operation is recorded with its outcome:

- *acknowledged*: ``UpdateSuccess`` came back (in sync mode: the row is committed);
- *failed*: a reply that says it was not applied (``ModifyFailure``, ``UpdateDataDeleted``);
- *unknown*: no reply (its node was killed with the operation in flight), or ``StoreFailure``
  (applied in memory, committed later if the node lives that long).

The faults (:func:`fault_schedule`, from a seed): partitions of random shapes then heals,
``kill -9`` of one node or of the whole cluster then restarts, kills of a DurableWriter, and store
outages.  At the end every node is up and healed; the check (:meth:`ChaosReport.check`) waits for
the nodes to converge, reads every key on every node with ``ReadAll``, and demands:

- every acknowledged element is present, and no element that was never sent;
- every counter is at least its acknowledged total and at most acknowledged + unknown (an
  increment counted twice shows here);
- in write-behind mode, an acknowledged operation may be missing only if its node was killed
  within the documented bound after acknowledging it.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from thespian_dd._testkit.harness import Cluster, Probe, ProbeSendAll, ProbeTake, Received
from thespian_dd.gcounter import GCounter
from thespian_dd.messages import (
    Get,
    GetSuccess,
    ModifyFailure,
    NotFound,
    ReadAll,
    ReadConsistency,
    ReadLocal,
    StoreFailure,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
)
from thespian_dd.orset import ORSet

__all__ = ["ChaosReport", "Fault", "Operation", "fault_schedule", "run_chaos"]

KINDS = ("partition", "kill", "kill-all", "kill-writer", "store-outage")
"""Every kind of fault; :func:`fault_schedule` draws from these."""

STORE_OUTAGE_PATIENCE = 8.0
"""Seconds a batch waits for replies during a store outage (past one failed commit)."""


@dataclass(frozen=True)
class Fault:
    """One fault: ``kind`` (see :data:`~thespian_dd._testkit.chaos.KINDS`), the nodes it hits
    (``groups``: a partition's sides; ``nodes``: the killed, or those whose writer or store
    fails), and how many batches of the workload run while it lasts."""

    kind: str
    nodes: tuple[int, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()
    hold: int = 1

    def __str__(self) -> str:
        def names(nodes: Iterable[int]) -> str:
            return "+".join(f"n{i + 1}" for i in nodes)

        if self.kind == "partition":
            return "partition " + " | ".join(names(g) for g in self.groups)
        return f"{self.kind} {names(self.nodes)}" if self.kind != "kill-all" else "kill-all"


def fault_schedule(  # noqa: PLR0913 - the shape of a schedule, keyword-only past faults
    seed: int,
    nodes: int,
    faults: int,
    full_kills: int = 2,
    kinds: Sequence[str] = KINDS,
    *,
    every_kind: bool = False,
) -> list[Fault]:
    """``faults`` faults for a cluster of ``nodes``, ``full_kills`` of them whole-cluster kills,
    the rest drawn from ``kinds`` (with ``every_kind``, each of them at least once); the same
    seed gives the same schedule."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {list(KINDS)}")
    if not 0 <= full_kills <= faults:
        raise ValueError(f"full_kills must be between 0 and faults ({faults}), not {full_kills}")
    rng = random.Random(seed)
    others = [k for k in kinds if k != "kill-all"] or ["kill-all"]
    fixed = others if every_kind else []
    if full_kills + len(fixed) > faults:
        raise ValueError(f"{faults} faults cannot hold every kind and {full_kills} full kills")
    drawn = [rng.choice(others) for _ in range(faults - full_kills - len(fixed))]
    chosen = ["kill-all"] * full_kills + fixed + drawn
    rng.shuffle(chosen)
    schedule = []
    everyone = list(range(nodes))
    for kind in chosen:
        if kind == "partition":
            shuffled = rng.sample(everyone, nodes)
            sides = rng.randint(2, min(3, nodes))
            cuts = sorted(rng.sample(range(1, nodes), sides - 1))
            groups = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, nodes], strict=True)]
            schedule.append(Fault(kind, groups=tuple(tuple(sorted(g)) for g in groups), hold=2))
        elif kind == "kill-all":
            schedule.append(Fault(kind, tuple(everyone)))
        elif kind == "kill":
            count = rng.randint(1, max(1, (nodes - 1) // 2))
            schedule.append(Fault(kind, tuple(sorted(rng.sample(everyone, count))), hold=2))
        else:  # a DurableWriter, or a store, of one node
            schedule.append(Fault(kind, (rng.randrange(nodes),)))
    return schedule


def _add(element: str, value: ORSet, node: Any) -> ORSet:
    return value.add(node, element)


def _increment(amount: int, value: GCounter, node: Any) -> GCounter:
    return value.increment(node, amount)


@dataclass
class Operation:
    """One operation of the workload and what became of it."""

    id: int
    node: int
    key: str
    element: str | None  # an ORSet insert, or None: a counter increment by ``amount``
    amount: int = 0
    outcome: str = "unknown"  # "acknowledged", "failed" or "unknown"
    acknowledged_at: float | None = None  # when the reply reached the client (time.time())

    def update(self) -> Update:
        """The tagged :class:`~thespian_dd.Update` that performs this operation (an ORSet insert
        or a GCounter increment)."""
        token = ("chaos", self.id)
        if self.element is not None:
            return Update(self.key, ORSet(), functools.partial(_add, self.element), None, token)
        return Update(self.key, GCounter(), functools.partial(_increment, self.amount), None, token)


@dataclass
class ChaosReport:
    """What :func:`run_chaos` did and found; :meth:`check` raises if a promise was broken."""

    seed: int
    nodes: int
    keys: int
    write_mode: str
    operations: list[Operation] = field(default_factory=list)
    faults: list[tuple[Fault, float, float]] = field(default_factory=list)  # fault, start, end
    kills: dict[int, list[float]] = field(default_factory=dict)  # node -> times it was killed
    elapsed: float = 0.0
    convergence: float | None = None  # seconds from the last heal until every node agreed
    settled: float | None = None  # seconds from the last write until every node agreed
    values: dict[str, Any] = field(default_factory=dict)  # key -> value read with ReadAll
    lost: list[Operation] = field(default_factory=list)  # acknowledged inserts then missing
    short: dict[str, int] = field(default_factory=dict)  # counter -> how far below acknowledged
    unexplained: list[str] = field(default_factory=list)  # broken promises, in words

    def count(self, outcome: str) -> int:
        """How many operations had ``outcome``: ``"acknowledged"``, ``"failed"`` or
        ``"unknown"``."""
        return sum(op.outcome == outcome for op in self.operations)

    def summary(self) -> str:
        """One line: seed, operations, faults, outcomes, and how many acknowledged inserts and
        increments were lost."""
        lost_age = [self._age_at_kill(op) for op in self.lost]
        return (
            f"chaos seed {self.seed}: {len(self.operations)} operations on {self.nodes} nodes over "
            f"{self.keys} keys ({self.write_mode}) in {self.elapsed:.1f} s; "
            f"{len(self.faults)} faults: {', '.join(str(f) for f, _, _ in self.faults)}; "
            f"{self.count('acknowledged')} acknowledged, {self.count('unknown')} unknown, "
            f"{self.count('failed')} failed; {len(self.lost)} acknowledged inserts lost, "
            f"{sum(self.short.values())} acknowledged increments lost"
            + (
                f" (acknowledged at most {max(a for a in lost_age if a is not None):.2f} s "
                "before their node was killed)"
                if any(a is not None for a in lost_age)
                else ""
            )
            + f", {len(self.unexplained)} broken promises; converged "
            + (
                f"{self.convergence:.2f} s after the last heal, {self.settled:.2f} s after the "
                "last write"
                if self.convergence is not None and self.settled is not None
                else "never"
            )
        )

    def _age_at_kill(self, op: Operation) -> float | None:
        """How long before the first later kill of its node ``op`` was acknowledged."""
        if op.acknowledged_at is None:
            return None
        later = [t for t in self.kills.get(op.node, []) if t >= op.acknowledged_at]
        return min(later) - op.acknowledged_at if later else None

    def _at_risk(self, op: Operation, loss_bound: float | None) -> bool:
        """Whether losing acknowledged ``op`` is within ``loss_bound``: its node was killed at
        most that many seconds after acknowledging it (never, with no bound: sync mode)."""
        age = self._age_at_kill(op)
        return loss_bound is not None and age is not None and age <= loss_bound

    def check(self, loss_bound: float | None = None) -> None:
        """Raise ``AssertionError`` naming every broken promise: an acknowledged operation
        missing (with a ``loss_bound``, as for write-behind mode: unless its node was killed at
        most that many seconds after acknowledging it), an element never sent, a counter above
        what was sent, or nodes that did not converge."""
        problems = list(self.unexplained)
        for op in self.lost:
            if not self._at_risk(op, loss_bound):
                age = self._age_at_kill(op)
                problems.append(
                    f"operation {op.id} ({op.key} on n{op.node + 1}) was acknowledged and is lost"
                    + (f" ({age:.2f} s before a kill of its node)" if age is not None else "")
                )
        for key, short in self.short.items():
            # Which increments are missing cannot be told apart: at most those at risk may be.
            at_risk = sum(
                op.amount
                for op in self.operations
                if op.key == key and op.outcome == "acknowledged" and self._at_risk(op, loss_bound)
            )
            if short > at_risk:
                problems.append(
                    f"{key} is {short} below its acknowledged increments ({at_risk} of them "
                    "were acknowledged within the loss bound before a kill of their node)"
                )
        if problems:
            raise AssertionError(
                f"{self.summary()}\n"
                + "\n".join(problems[:20])
                + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
            )


class _Clients:
    """A Probe on each live node, which sends the workload's updates and collects replies."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.probes: dict[int, tuple[int, Any]] = {}  # node -> (its start count, probe)

    def probe(self, i: int) -> Any:
        node = self.cluster.nodes[i]
        known = self.probes.get(i)
        if known is None or known[0] != node.starts:
            known = (node.starts, node.client.createActor(Probe))
            self.probes[i] = known
        return known[1]

    def send(self, i: int, messages: list[Any]) -> None:
        node = self.cluster.nodes[i]
        node.client.tell(self.probe(i), ProbeSendAll(node.replicator, messages))

    def take(self, i: int) -> list[tuple[Any, float]]:
        node = self.cluster.nodes[i]
        reply = node.client.ask(self.probe(i), ProbeTake(clear=True), 30)
        if not isinstance(reply, Received):
            return []
        return list(zip(reply.messages, reply.times, strict=True))

    def read(self, i: int, keys: Sequence[str], consistency: ReadConsistency) -> dict[str, Any]:
        """Every key's value on node ``i`` (None where it has none)."""
        tokens: dict[Any, str] = {("chaos-read", k): k for k in keys}
        self.send(i, [Get(k, consistency, token) for token, k in tokens.items()])
        values: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while len(values) < len(keys) and time.monotonic() < deadline:
            for reply, _ in self.take(i):
                key = tokens.get(getattr(reply, "request", None))
                if key is None:
                    continue
                if isinstance(reply, GetSuccess):
                    values[key] = reply.data.value
                elif isinstance(reply, NotFound):
                    values[key] = None
                else:
                    raise AssertionError(  # noqa: TRY004 - a broken promise, not a type error
                        f"n{i + 1} answered {reply!r} to a read of {key!r}"
                    )
        missing = set(keys) - set(values)
        if missing:
            raise AssertionError(f"n{i + 1} did not answer reads of {sorted(missing)[:5]}")
        return values


class _Run:
    def __init__(
        self, cluster: Cluster, report: ChaosReport, batch: int, log: Callable[[str], object]
    ) -> None:
        self.cluster = cluster
        self.report = report
        self.clients = _Clients(cluster)
        self.batch = batch
        self.log = log
        self.rng = random.Random(report.seed)
        self.up = set(range(len(cluster.nodes)))
        self.set_keys = [f"chaos-set-{k}" for k in range((report.keys + 1) // 2)]
        self.counter_keys = [f"chaos-count-{k}" for k in range(report.keys // 2)]
        self.next_id = 0
        self.target = 0  # how many operations the workload sends in all
        self.last_heal = time.monotonic()  # when the last fault ended: convergence counts from it

    def operations(self, count: int) -> list[Operation]:
        ops = []
        live = sorted(self.up)
        for _ in range(min(count, self.target - self.next_id)):
            i = self.next_id
            node = live[i % len(live)]
            if self.counter_keys and (not self.set_keys or self.rng.random() < 0.5):
                op = Operation(i, node, self.rng.choice(self.counter_keys), None)
                op.amount = self.rng.randint(1, 5)
            else:
                op = Operation(i, node, self.rng.choice(self.set_keys), f"e{i}")
            ops.append(op)
            self.next_id += 1
        self.report.operations.extend(ops)
        return ops

    def run_batch(self, kill: Sequence[int] = (), patience: float = 60.0) -> None:
        """Send a batch from every live node and collect the replies for up to ``patience``
        seconds; with ``kill``, those nodes are killed with part of their batch still in
        flight.  Operations left unanswered stay unknown (applied or not)."""
        ops = self.operations(self.batch)
        by_node: dict[int, dict[tuple[str, int], Operation]] = {}
        for op in ops:
            by_node.setdefault(op.node, {})[("chaos", op.id)] = op
        for i, pending in by_node.items():
            self.clients.send(i, [op.update() for op in pending.values()])
        if kill:
            # Wait until about half the victims' operations are answered, then kill them.
            victims = {i: by_node.get(i, {}) for i in kill}
            want = {i: len(p) // 2 for i, p in victims.items()}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                sum(op.outcome != "unknown" for op in victims[i].values()) < want[i] for i in kill
            ):
                for i in kill:
                    self.collect(i, victims[i])
            for i in kill:
                self.collect(i, victims[i])
                self.cluster.kill(i)
                self.report.kills.setdefault(i, []).append(time.time())
                self.up.discard(i)
                by_node.pop(i, None)
        began = time.monotonic()
        deadline = began + patience
        while time.monotonic() < deadline and any(
            any(op.outcome == "unknown" for op in p.values()) for p in by_node.values()
        ):
            for i, pending in by_node.items():
                self.collect(i, pending)
        unanswered = {
            f"n{i + 1}": n
            for i, p in by_node.items()
            if (n := sum(op.outcome == "unknown" for op in p.values()))
        }
        self.log(
            f"batch of {len(ops)}: answered in {time.monotonic() - began:.2f} s"
            + (f", unanswered: {unanswered}" if unanswered else "")
        )

    def collect(self, i: int, pending: dict[Any, Operation]) -> None:
        for reply, at in self.clients.take(i):
            op = pending.get(getattr(reply, "request", None))
            if op is None:
                continue
            if isinstance(reply, UpdateSuccess):
                op.outcome, op.acknowledged_at = "acknowledged", at
            elif isinstance(reply, (ModifyFailure, UpdateDataDeleted)):
                op.outcome = "failed"
                self.report.unexplained.append(f"operation {op.id} failed: {reply!r}")
            elif not isinstance(reply, StoreFailure):  # StoreFailure: applied in memory
                self.report.unexplained.append(f"operation {op.id} got {reply!r}")

    def restart(self, nodes: Iterable[int]) -> None:
        for i in sorted(nodes):
            self.cluster.restart(i)
            self.up.add(i)

    def inflict(self, fault: Fault) -> None:
        """Run ``fault.hold`` batches of the workload under ``fault``, end it, then one quiet
        batch."""
        start = time.time()
        self.log(f"fault: {fault}")
        end = self.begin(fault)
        # Under a store outage, sync writes on the nodes hit wait for the store, failing every
        # busy timeout (5 s): collect what comes in a while, then end the outage.
        patience = STORE_OUTAGE_PATIENCE if fault.kind == "store-outage" else 60.0
        try:
            for _ in range(fault.hold - (fault.kind in ("kill", "kill-all"))):
                self.run_batch(patience=patience)
        finally:
            end()
        self.report.faults.append((fault, start, time.time()))
        self.last_heal = time.monotonic()
        self.run_batch()

    def begin(self, fault: Fault) -> Callable[[], object]:
        """Inflict ``fault``; returns what ends it."""
        if fault.kind == "partition":
            self.cluster.split(*(list(g) for g in fault.groups))
            return self.cluster.heal
        if fault.kind in ("kill", "kill-all"):
            self.run_batch(kill=fault.nodes)  # killed with operations in flight
            return functools.partial(self.restart, fault.nodes)
        if fault.kind == "kill-writer":
            for i in fault.nodes:
                self.cluster.kill_writer(i)
            return lambda: None  # the Replicator creates a new writer by itself
        outages = [self.cluster.store_outage(i) for i in fault.nodes]

        def end() -> None:
            for outage in outages:
                outage.end()

        return end

    def verify(self) -> None:
        report = self.report
        keys = self.set_keys + self.counter_keys
        last_write = time.monotonic()
        deadline = last_write + 120
        while True:
            views = [
                self.clients.read(i, keys, ReadLocal()) for i in range(len(self.cluster.nodes))
            ]
            if all(view == views[0] for view in views):
                report.convergence = time.monotonic() - self.last_heal
                report.settled = time.monotonic() - last_write
                break
            if time.monotonic() > deadline:
                differ = [k for k in keys if len({repr(v[k]) for v in views}) > 1]
                report.unexplained.append(f"nodes still differ after 120 s on {differ[:5]}")
                break
        for i in range(len(self.cluster.nodes)):
            values = self.clients.read(i, keys, ReadAll(timeout=10))
            if i == 0:
                report.values = values
            elif values != report.values:
                report.unexplained.append(f"ReadAll on n{i + 1} differs from n1")
        self.judge()

    def judge(self) -> None:
        """Compare what every node read with what was sent and acknowledged."""
        report = self.report
        sent: dict[str, set[str]] = {k: set() for k in self.set_keys}
        for op in report.operations:
            if op.element is None:
                continue
            sent[op.key].add(op.element)
            if op.outcome == "acknowledged" and op.element not in (report.values[op.key] or ()):
                report.lost.append(op)
        for key, elements in sent.items():
            strangers = set(report.values[key] or ()) - elements
            if strangers:
                report.unexplained.append(
                    f"{key} holds elements never sent: {sorted(strangers)[:5]}"
                )
        for key in self.counter_keys:
            self.judge_counter(key, [op for op in report.operations if op.key == key])

    def judge_counter(self, key: str, ops: list[Operation]) -> None:
        value = self.report.values[key] or 0
        low = sum(op.amount for op in ops if op.outcome == "acknowledged")
        high = low + sum(op.amount for op in ops if op.outcome == "unknown")
        if value > high:
            self.report.unexplained.append(
                f"{key} is {value}, above the {high} sent: an increment counted twice"
            )
        if value < low:
            self.report.short[key] = low - value


def _quiet(_line: str) -> None:
    pass


def run_chaos(  # noqa: PLR0913 - every knob of a run, keyword-only
    cluster: Cluster,
    seed: int,
    *,
    operations: int = 10_000,
    keys: int = 100,
    schedule: Sequence[Fault] | None = None,
    faults: int = 10,
    full_kills: int = 2,
    log: Callable[[str], object] = _quiet,
) -> ChaosReport:
    """Run the workload on a started ``cluster`` (with a store, for kills to be survivable)
    under ``schedule`` (default: :func:`fault_schedule` of ``seed``), then verify; returns the
    report, on which :meth:`ChaosReport.check` asserts the promises."""
    nodes = len(cluster.nodes)
    if schedule is None:
        kinds = KINDS if cluster.settings.get("store") else ("partition", "kill", "kill-all")
        schedule = fault_schedule(seed, nodes, faults, full_kills, kinds)
    report = ChaosReport(seed, nodes, keys, str(cluster.settings.get("write_mode", "sync")))
    batches = 1 + sum(f.hold + 1 for f in schedule)
    run = _Run(cluster, report, batch=max(1, -(-operations // batches)), log=log)
    run.target = operations
    began = time.monotonic()
    run.run_batch()
    for fault in schedule:
        run.inflict(fault)
    while run.next_id < operations:
        run.run_batch()
    report.elapsed = time.monotonic() - began
    run.verify()
    log(report.summary())
    return report
