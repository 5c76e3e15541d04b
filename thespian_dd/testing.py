"""Helpers for testing applications that use thespian_dd, and thespian_dd itself.

Everything here imports without pytest. The fixtures ``thespian_node`` and ``cluster_factory``
are a pytest plugin that installing thespian_dd registers (the ``pytest11`` entry point
``thespian_dd._testkit.plugin``): a project's tests have them with no ``conftest.py`` line.
Without the entry point (the package only on ``sys.path``, or ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``
set), ``pytest_plugins = ["thespian_dd.testing"]`` in a ``conftest.py`` loads them; with it, that
line is harmless (the plugin is registered once).

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
from thespian_dd._testkit.netns import require_network_namespaces

# Loaded when pytest registers this module (a conftest's ``pytest_plugins``): the fixtures.
pytest_plugins = ["thespian_dd._testkit.plugin"]

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
    "eventually",
    "fault_schedule",
    "free_port",
    "require_network_namespaces",
    "run_chaos",
    "scratch_database",
    "start_node",
]
