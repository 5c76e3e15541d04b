"""Every data type against its reference model (tests/models.py), riak_dt style: ONE generic
state machine runs random histories on 3 to 5 replicas and, after every step, compares each
replica's value with the value its model gives.

A history's steps: operations of the type's public API on a random replica (updates, removes,
keys created again, nested updates, values rebuilt inside ``modify``), full-state merges, deltas
delivered to one peer (in or out of order, or lost), restarts (a new incarnation, with the state
kept as a durable node would, or lost as an in-memory node would), pruning of an old incarnation
into a live replica, and full synchronisation.  At the end every replica merges every other: all
must then hold the same state, whose value is the model's for the union of all events.

Operations are applied as the Replicator applies them: what ``modify`` returns must be an
inflation of the current value, else the update is refused and nothing changes.  Only operations
that rebuild a value (or an LWW write that loses) may be refused; every other refusal fails the
test.  A history is bytes, so Hypothesis shrinks a failure to a short list of steps, printed as
such: pin it in tests/test_regressions.py.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, note, seed, settings
from hypothesis import strategies as st
from models import MODELS, Events, Model, Tags

from thespian_dd import DeltaReplicatedData, RemovedNodePruning, ReplicaId

# Histories per type: 10,000 in CI, a quick run while developing; more on demand, e.g.
# THESPIAN_DD_MODEL_HISTORIES=100000 THESPIAN_DD_MODEL_STEPS=60 pytest tests/test_models.py
HISTORIES = int(
    os.environ.get("THESPIAN_DD_MODEL_HISTORIES")
    or {"ci": 10_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "dev"), 300)
)
STEPS = int(os.environ.get("THESPIAN_DD_MODEL_STEPS") or 30)


class Machine:
    """The replicas of one history, real and modelled side by side."""

    def __init__(self, model: Model, n: int) -> None:
        self.model = model
        self.n = n
        self.tags = Tags()
        self.incarnation = [1] * n
        self.real: list[Any] = [model.zero() for _ in range(n)]
        self.known: list[Events] = [frozenset()] * n
        self.outbox: list[list[tuple[Any, Events]]] = [[] for _ in range(n)]
        self.departed: list[ReplicaId] = []  # earlier incarnations, not pruned yet
        self.pruned: list[ReplicaId] = []
        self.absorbed: dict[ReplicaId, set[ReplicaId]] = {}  # owner -> replicas pruned into it

    def replica(self, i: int) -> ReplicaId:
        return ReplicaId(f"n{i}", self.incarnation[i])

    # -- steps -----------------------------------------------------------------------------------

    def op(self, i: int, which: int, arg: int) -> None:
        op = self.model.ops[which % len(self.model.ops)]
        actor, old = self.replica(i), self.real[i]
        note(f"  n{i}: {op.name}({arg})")
        refusal: str | None = None
        try:
            new, events = op.apply(self.tags, old, self.known[i], actor, arg)
        except ValueError as e:  # a map refused what modify returned
            refusal = str(e)
        if refusal is not None:
            assert op.rebuild, f"{op.name} was refused: {refusal}"
            return
        if old is not None and not new.is_inflation_of(old):  # the Replicator refuses it
            assert op.rebuild, f"{op.name} returned a value that is not an inflation"
            if op.name == "write_fixed":  # a refused LWW write must be one that loses
                assert self.value_of(self.known[i] | events) == self.value_of(self.known[i])
            return
        if op.rebuild and new == old:
            events = frozenset()  # a value rebuilt equal to the current one writes nothing
        known = self.known[i] | events
        if isinstance(new, DeltaReplicatedData):
            delta, new = new.delta, new.reset_delta()
            carried = self._delta_events(known, events, actor)
        else:
            delta, carried = new, known  # no deltas: the whole state ships
        self.real[i], self.known[i] = new, known
        if delta is not None and events:
            self.outbox[i] = [*self.outbox[i][-7:], (delta, carried)]
        self.check(i)

    def _delta_events(self, known: Events, events: Events, actor: ReplicaId) -> Events:
        """What a delta tells a peer: the operation's events; for a counter, every increment of
        the acting replica on the side it changed (its delta holds the replica's whole units),
        with those of the replicas pruned into it."""
        if self.model.name not in ("GCounter", "PNCounter"):
            return events
        sides = {e[3] for e in events if e[0] == "inc"}
        by = {actor, *self.absorbed.get(actor, ())}
        return frozenset(e for e in known if e[0] == "inc" and e[2] in by and e[3] in sides)

    def merge(self, i: int, j: int) -> None:
        note(f"  n{i} merges n{j}")
        self._receive(i, self.real[j], self.known[j], delta=False)

    def deliver(self, i: int, j: int, k: int) -> None:
        """The ``k``-th delta of ``i`` reaches ``j`` (out of order unless k is 0)."""
        if not self.outbox[i] or i == j:
            return
        delta, events = self.outbox[i][k % len(self.outbox[i])]
        note(f"  n{j} gets delta {k % len(self.outbox[i])} of n{i}")
        self._receive(j, delta, events, delta=True)

    def ship(self, i: int) -> None:
        note(f"  n{i} ships its deltas")
        for delta, events in self.outbox[i]:
            for j in range(self.n):
                if j != i:
                    self._receive(j, delta, events, delta=True)
        self.outbox[i] = []

    def _receive(self, i: int, payload: Any, events: Events, *, delta: bool) -> None:
        if payload is None:
            return
        mine, payload = self._clean(self.real[i]), self._clean(payload)
        if mine is None:
            delta_type = isinstance(payload, DeltaReplicatedData)
            self.real[i] = payload.reset_delta() if delta_type else payload
        else:
            merging_delta = delta and isinstance(mine, DeltaReplicatedData)
            self.real[i] = mine.merge_delta(payload) if merging_delta else mine.merge(payload)
        self.known[i] |= events
        self.check(i)

    def _clean(self, value: Any) -> Any:
        """As the Replicator does with markers: slots of pruned replicas never come back."""
        if isinstance(value, RemovedNodePruning):
            for removed in self.pruned:
                value = value.pruning_cleanup(removed)
        return value

    def restart(self, i: int, *, durable: bool) -> None:
        note(f"  n{i} restarts{'' if durable else ' with nothing'}")
        self.departed.append(self.replica(i))
        self.incarnation[i] += 1
        self.outbox[i] = []  # deltas not shipped yet are lost
        if not durable:
            self.real[i], self.known[i] = self.model.zero(), frozenset()
        self.check(i)

    def sync(self) -> None:
        note("  everyone merges everyone")
        for i in range(1, self.n):
            self._receive(0, self.real[i], self.known[i], delta=False)
        for i in range(1, self.n):
            self._receive(i, self.real[0], self.known[0], delta=False)

    def prune(self, owner: int, k: int) -> None:
        """An earlier incarnation is pruned into ``owner`` once every replica has merged every
        other (the Replicator waits for every node to have seen the pruning marker)."""
        if not self.departed:
            return
        removed = self.departed.pop(k % len(self.departed))
        into = self.replica(owner)
        note(f"  {removed} is pruned into n{owner}")
        self.sync()
        # Deltas ship within the delta interval; pruning waits until every node has merged the
        # value (minutes): no delta made before the pruning is still on its way.
        self.outbox = [[] for _ in range(self.n)]
        if isinstance(self.real[owner], RemovedNodePruning):
            self.real[owner] = self.real[owner].prune(removed, into)
        self.pruned.append(removed)
        self.absorbed.setdefault(into, set()).update({removed, *self.absorbed.pop(removed, ())})
        self.check(owner)
        for j in range(self.n):
            if j != owner:
                self._receive(j, self.real[owner], self.known[owner], delta=False)

    # -- checks ----------------------------------------------------------------------------------

    def value_of(self, events: Events) -> Any:
        return self.model.value(events)

    def check(self, i: int) -> None:
        real = self.real[i]
        actual = None if real is None else real.value
        expected = self.value_of(self.known[i])
        assert actual == expected, f"n{i} holds {actual!r}, its model says {expected!r}: {real!r}"

    def converged(self) -> None:
        self.sync()
        states = self.real
        assert all(s == states[0] for s in states), "replicas hold different states after a sync"
        everything = frozenset().union(*self.known)
        for i in range(self.n):
            assert self.known[i] == everything
            self.check(i)


def run_history(model: Model, history: bytes) -> int:
    """Run ``history`` (bytes: the replica count, then 4 bytes a step); returns the steps run."""
    n = 3 + history[0] % 3 if history else 3
    machine = Machine(model, n)
    note(f"{model.name} on {n} replicas:")
    steps = 0
    for k in range(1, len(history) - 3, 4):
        kind, i, a, b = history[k : k + 4]
        i %= n
        kind %= 16
        if kind < 8:
            machine.op(i, a, b)
        elif kind < 10:
            machine.merge(i, a % n)
        elif kind < 12:
            machine.deliver(i, a % n, b)
        elif kind == 12:
            machine.ship(i)
        elif kind == 13:
            machine.restart(i, durable=a % 4 != 0)
        elif kind == 14:
            machine.prune(i, b)
        else:
            machine.sync()
        steps += 1
    machine.converged()
    return steps


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_every_replica_agrees_with_its_model_after_every_step(
    model: Model, figure: Callable[[str], None]
) -> None:
    histories = steps = 0

    # A seed of its own for each type and each run (Hypothesis prints it when a history fails):
    # drawn from the global random state, every type would get the same histories, every run.
    @seed(random.SystemRandom().getrandbits(64))
    @settings(max_examples=HISTORIES)
    @given(history=st.binary(min_size=1 + 4 * STEPS // 3, max_size=1 + 4 * STEPS))
    def run(history: bytes) -> None:
        nonlocal histories, steps
        steps += run_history(model, history)
        histories += 1

    run()
    figure(f"model {model.name}: {histories:,} histories, {steps:,} steps")
