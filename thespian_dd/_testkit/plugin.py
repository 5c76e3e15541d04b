"""The pytest plugin of :mod:`thespian_dd.testing`: the fixtures ``thespian_node`` and
``cluster_factory``.

Installing thespian_dd registers it with pytest (the ``pytest11`` entry point in setup.cfg), so a
project's tests get the fixtures without a line of configuration. Its entry point is named after
this module on purpose: an older ``conftest.py`` that says ``pytest_plugins =
["thespian_dd.testing"]`` reaches this module under the same name, and pytest, which refuses to
register one plugin under two names, sees it is already loaded. Without the entry point (the
package on ``sys.path`` but not installed, or ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` set), that
``pytest_plugins`` line, or ``-p thespian_dd._testkit.plugin``, loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from thespian_dd._testkit.harness import Cluster, Node, start_node
from thespian_dd._testkit.netns import require_network_namespaces

__all__ = ["cluster_factory", "thespian_node"]


@pytest.fixture
def thespian_node() -> Iterator[Node]:
    """A real ``multiprocTCPBase`` node (its own admin and actor processes) with a Replicator."""
    node = start_node(notify_interval=0.05)
    try:
        yield node
    finally:
        node.asys.shutdown()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster_factory(3, gossip_interval=0.5)`` starts a :class:`~thespian_dd.testing.Cluster`;
    stopped after the test. ``cluster_factory(3, network=True)``: nodes in network namespaces,
    real partitions (see :func:`~thespian_dd.testing.require_network_namespaces` for when the
    test is skipped instead)."""
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
