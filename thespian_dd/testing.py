"""Helpers for testing applications that use thespian_dd, and thespian_dd itself.

Use it as a pytest plugin: ``pytest_plugins = ["thespian_dd.testing"]`` in a ``conftest.py``.

- :func:`eventually`: poll a condition until it holds or a deadline passes (never a bare sleep).
- :func:`free_port`: a free loopback TCP port for a new ActorSystem (never Thespian's 1900).
- :class:`Probe`: an actor that records what it receives, and sends on request, so a test can
  subscribe an actor and look at what the Replicator sent it.
- :func:`scratch_database`: a new, empty database on a PostgreSQL or MariaDB server (dropped
  afterwards), to test an application against a real store.
- fixture ``thespian_node``: a real ``multiprocTCPBase`` ActorSystem on a fresh port, with its
  Replicator started; shut down after the test.
- :class:`Cluster` and fixture ``cluster_factory``: N nodes, each a separate OS process
  (``python -m thespian_dd node``) on its own loopback port, with a client handle per node;
  ``kill`` (SIGKILL to the node's processes), ``restart`` on the same port, ``split``,
  ``partition`` and ``heal`` (a TEST-ONLY switch in the Replicators, see ``PartitionForTests``).
  With ``network=True`` every node runs in a Linux network namespace of its own and partitions
  are real: packets dropped by nftables (needs root; :func:`require_network_namespaces` skips
  the test without it, or fails it when ``THESPIAN_DD_REQUIRE_NETNS`` is set).
- :func:`run_chaos`: a recorded workload on a :class:`Cluster` under a seeded
  :func:`fault_schedule` (partitions, ``kill -9`` of nodes and of the whole cluster, DurableWriter
  kills, store outages), then a check that every acknowledged operation is on every node
  (:meth:`ChaosReport.check`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thespian_dd._testkit.chaos import ChaosReport, Fault, Operation, fault_schedule, run_chaos
from thespian_dd._testkit.harness import (
    FAST,
    Cluster,
    Node,
    Probe,
    ProbeSend,
    ProbeSendAll,
    ProbeTake,
    Received,
    eventually,
    free_port,
    scratch_database,
    start_node,
)
from thespian_dd._testkit.netns import unavailable

__all__ = [
    "FAST",
    "ChaosReport",
    "Cluster",
    "Fault",
    "Node",
    "Operation",
    "Probe",
    "ProbeSend",
    "ProbeSendAll",
    "ProbeTake",
    "Received",
    "cluster_factory",
    "eventually",
    "fault_schedule",
    "free_port",
    "require_network_namespaces",
    "run_chaos",
    "scratch_database",
    "start_node",
    "thespian_node",
]


@pytest.fixture
def thespian_node() -> Iterator[Node]:
    """A real ``multiprocTCPBase`` node (its own admin and actor processes) with a Replicator."""
    node = start_node(notify_interval=0.05)
    try:
        yield node
    finally:
        node.asys.shutdown()


def require_network_namespaces() -> None:
    """Skip the calling test if this machine cannot run hosts in network namespaces of their
    own (``Cluster(network=True)``), with the reason; fail it instead when the environment
    variable ``THESPIAN_DD_REQUIRE_NETNS`` is set (where these tests must run)."""
    reason = unavailable()
    if reason:
        if os.environ.get("THESPIAN_DD_REQUIRE_NETNS"):
            pytest.fail(f"{reason}; THESPIAN_DD_REQUIRE_NETNS is set: these tests must run")
        pytest.skip(reason)


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(3, gossip_interval=0.5)`` starts a :class:`Cluster`; stopped after.
    ``cluster_factory(3, network=True)``: nodes in network namespaces, real partitions (see
    :func:`require_network_namespaces` for when the test is skipped instead)."""
    clusters: list[Cluster] = []

    def make(n: int, network: bool = False, **settings: float | str) -> Cluster:
        if network:
            require_network_namespaces()
        cluster = Cluster(tmp_path, n, network=network, **settings)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.stop()
