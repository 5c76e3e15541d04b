"""The chaos harness (``thespian_dd.testing.run_chaos``) on five real durable nodes: a recorded
workload under a seeded schedule of partitions, kills, full-cluster kills, DurableWriter kills and
store outages, then every acknowledged operation looked for with ReadAll on every node.

Partitions are the Replicators' TEST-ONLY switch, except in the run with ``network=True``, where
every node is in a Linux network namespace of its own and a partition drops packets (needs root:
skipped without it, failed in CI).

The short schedules (every kind of fault once, and one more) and a long one in sync mode
(10,000 operations, 10 faults, two full-cluster kills) run with the suite; the long ones in
write-behind mode and with real partitions with ``pytest -m chaos``.  Every run prints its seed; set
``THESPIAN_DD_CHAOS_SEED`` to run a schedule again."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from thespian_dd.testing import Fault, fault_schedule, run_chaos

WRITE_BEHIND_INTERVAL = 0.5
COMMIT_ALLOWANCE = 1.0
"""The time of one commit, on top of the write-behind interval, in the documented loss bound
(docs/durability.md, "What survives what"); generous for a loaded 2-core machine."""


def _seed() -> int:
    return int(os.environ.get("THESPIAN_DD_CHAOS_SEED") or random.SystemRandom().randrange(10**6))


def _settings(tmp_path: Path, write_mode: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"store": f"sqlite:///{tmp_path}/{{name}}.db"}
    if write_mode == "write-behind":
        settings.update(write_mode=write_mode, write_behind_interval=WRITE_BEHIND_INTERVAL)
    return settings


def _run(
    cluster_factory: Any,
    tmp_path: Path,
    figure: Callable[[str], None],
    *,
    write_mode: str,
    operations: int,
    faults: int,
    full_kills: int = 0,
    network: bool = False,
    schedule: Callable[[int], list[Fault]] | None = None,
) -> None:
    seed = _seed()
    # Shown with the test's output if it fails; the summary below goes to the run's figures.
    print(f"chaos seed {seed} ({write_mode}); THESPIAN_DD_CHAOS_SEED={seed} repeats it")  # noqa: T201
    cluster = cluster_factory(5, network=network, **_settings(tmp_path, write_mode))
    report = run_chaos(
        cluster,
        seed,
        operations=operations,
        keys=100,
        schedule=None if schedule is None else schedule(seed),
        faults=faults,
        full_kills=full_kills,
    )
    figure(report.summary())
    bound = None if write_mode == "sync" else WRITE_BEHIND_INTERVAL + COMMIT_ALLOWANCE
    report.check(loss_bound=bound)
    assert report.count("acknowledged") > operations // 2, report.summary()
    assert len(report.faults) == faults


def _every_kind(seed: int) -> list[Fault]:
    """Every kind of fault once (a full-cluster kill among them), and one more drawn at random,
    in an order of ``seed``: no kind is left out of a run by chance."""
    return fault_schedule(seed, 5, 6, full_kills=1, every_kind=True)


@pytest.mark.multinode
@pytest.mark.timeout(420)
@pytest.mark.parametrize("write_mode", ["sync", "write-behind"])
def test_a_short_chaos_schedule_loses_no_acknowledged_operation(
    cluster_factory: Any, tmp_path: Path, figure: Callable[[str], None], write_mode: str
) -> None:
    _run(
        cluster_factory,
        tmp_path,
        figure,
        write_mode=write_mode,
        operations=1000,
        faults=6,
        schedule=_every_kind,
    )


def _partitions_and_kills(seed: int) -> list[Fault]:
    """Two partitions, a kill and a full-cluster kill of five nodes, in an order of ``seed``."""
    schedule = [
        *fault_schedule(seed, 5, 2, full_kills=0, kinds=["partition"]),
        *fault_schedule(seed + 1, 5, 1, full_kills=0, kinds=["kill"]),
        Fault("kill-all", tuple(range(5))),
    ]
    random.Random(seed).shuffle(schedule)
    return schedule


@pytest.mark.multinode
@pytest.mark.timeout(300)
def test_a_short_chaos_schedule_with_real_partitions_loses_no_acknowledged_operation(
    cluster_factory: Any, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    """Every node in a network namespace of its own: a partition drops packets, so senders see
    silence and TCP retransmissions, not a switch in the Replicators."""
    _run(
        cluster_factory,
        tmp_path,
        figure,
        write_mode="sync",
        operations=1000,
        faults=4,
        network=True,
        schedule=_partitions_and_kills,
    )


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("write_mode", "network"),
    [
        # The long sync run is part of every test run, CI included; the others on demand.
        pytest.param("sync", False, marks=pytest.mark.multinode),
        pytest.param("write-behind", False, marks=[pytest.mark.multinode, pytest.mark.chaos]),
        pytest.param("sync", True, marks=[pytest.mark.multinode, pytest.mark.chaos]),
    ],
    ids=["sync", "write-behind", "sync-real-partitions"],
)
def test_a_long_chaos_schedule_loses_no_acknowledged_operation(
    cluster_factory: Any,
    tmp_path: Path,
    figure: Callable[[str], None],
    write_mode: str,
    network: bool,
) -> None:
    _run(
        cluster_factory,
        tmp_path,
        figure,
        write_mode=write_mode,
        operations=10_000,
        faults=10,
        full_kills=2,
        network=network,
    )


def test_a_seed_always_gives_the_same_schedule() -> None:
    assert fault_schedule(7, 5, 10) == fault_schedule(7, 5, 10)
    assert fault_schedule(7, 5, 10) != fault_schedule(8, 5, 10)


@pytest.mark.parametrize("seed", range(20))
def test_an_every_kind_schedule_holds_each_kind_whatever_the_seed(seed: int) -> None:
    kinds = [f.kind for f in _every_kind(seed)]
    assert len(kinds) == 6
    assert set(kinds) == {"partition", "kill", "kill-all", "kill-writer", "store-outage"}
    assert kinds.count("kill-all") == 1


@pytest.mark.parametrize("seed", range(20))
def test_schedules_hold_the_asked_faults_and_partitions_cover_every_node(seed: int) -> None:
    schedule = fault_schedule(seed, 5, 10, full_kills=2)
    assert len(schedule) == 10
    assert sum(f.kind == "kill-all" for f in schedule) == 2
    for fault in schedule:
        if fault.kind == "partition":
            assert len(fault.groups) >= 2
            assert sorted(i for g in fault.groups for i in g) == list(range(5))
        elif fault.kind == "kill":
            assert 1 <= len(fault.nodes) <= 2  # a majority stays up
        else:
            assert all(0 <= i < 5 for i in fault.nodes)


def test_a_schedule_refuses_unknown_kinds_and_impossible_counts() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        fault_schedule(1, 5, 3, kinds=["meteor"])
    with pytest.raises(ValueError, match="full_kills"):
        fault_schedule(1, 5, 3, full_kills=4)
    assert str(Fault("partition", groups=((0, 1), (2,)))) == "partition n1+n2 | n3"
