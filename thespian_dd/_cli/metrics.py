"""``node --metrics-port P``: the node's figures over HTTP, for Prometheus and for probes.

- ``/metrics``: :class:`~thespian_dd.Stats` in the Prometheus text format, each figure labelled
  with the node's name (needs the ``prometheus`` extra: ``prometheus-client``).
- ``/ready``: 200 once the node serves (its store loaded), 503 before, or when its Replicator
  does not answer.
- ``/alive``: 200 while the Replicator answers at all (also while it loads), 503 otherwise.

Every request asks the Replicator for its ``Stats`` (cheap: counters only) from a private
context of the node's ActorSystem, so requests on several threads never take each other's
replies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from thespian_dd._ask import ask
from thespian_dd.messages import GetStats, Stats

__all__ = ["MetricsServer", "require_prometheus"]

ASK_TIMEOUT = 5.0
"""Seconds a request waits for the Replicator's Stats before answering 503."""


def require_prometheus() -> str | None:
    """Why ``--metrics-port`` cannot work here (the ``prometheus`` extra is missing), or None."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return "--metrics-port needs the prometheus extra: pip install 'thespian_dd[prometheus]'"
    return None


class MetricsServer:
    """An HTTP server on ``host:port`` in a thread of its own, serving the node's figures;
    :meth:`close` stops it.  Needs ``prometheus-client`` (see :func:`require_prometheus`);
    raises ``OSError`` if the port cannot be bound."""

    def __init__(self, asys: Any, replicator: Any, host: str, port: int) -> None:
        from prometheus_client import CollectorRegistry

        self._asys = asys
        self._replicator = replicator
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Collector(self.stats))
        handler = type("Handler", (_Handler,), {"metrics": self})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="thespian_dd metrics", daemon=True
        )
        self._thread.start()

    def stats(self) -> Stats | None:
        """The Replicator's Stats, or None if it does not answer in time."""
        with self._asys.private() as context:
            reply = ask(context, self._replicator, GetStats(), ASK_TIMEOUT)
        return reply if isinstance(reply, Stats) else None

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self._registry)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class _Handler(BaseHTTPRequestHandler):
    metrics: MetricsServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._answer(200, self.metrics.exposition(), "text/plain; version=0.0.4")
        elif path in ("/ready", "/alive"):
            stats = self.metrics.stats()
            if stats is None:
                self._answer(503, b"the Replicator does not answer\n")
            elif path == "/alive" or stats.serving:
                self._answer(200, b"ok\n")
            else:
                why = stats.store_error or "loading its store"
                self._answer(503, f"not serving: {why}\n".encode())
        else:
            self._answer(404, b"not found: try /metrics, /ready or /alive\n")

    def _answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        """Scrapes are not logged."""


# (figure, Prometheus name, kind, help)
_FIGURES = [
    ("keys", "keys", "gauge", "keys holding a value"),
    ("peers", "peers", "gauge", "peers known (reachable or not)"),
    ("reachable_peers", "reachable_peers", "gauge", "peers reachable now"),
    ("subscribers", "subscribers", "gauge", "subscriptions"),
    ("store_queue_depth", "store_queue_depth", "gauge", "keys not committed yet"),
    ("refused_rows", "refused_rows", "gauge", "stored rows refused since the last load"),
    ("gossip_rounds", "gossip_rounds", "counter", "gossip rounds run"),
    ("gossip_bytes_in", "gossip_bytes_in", "counter", "gossip received (bytes)"),
    ("gossip_bytes_out", "gossip_bytes_out", "counter", "gossip sent (bytes)"),
    ("rejected_inputs", "rejected_inputs", "counter", "requests, payloads and rows refused"),
    ("store_failures", "store_failures", "counter", "store commits that failed"),
]


class _Collector:
    def __init__(self, stats: Any) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self._stats()
        up = GaugeMetricFamily(
            "thespian_dd_up", "1 if the Replicator answered this scrape", labels=["node"]
        )
        if stats is None:
            up.add_metric([""], 0)
            yield up
            return
        node = stats.node.rsplit("#", 1)[0]
        up.add_metric([node], 1)
        yield up
        serving = GaugeMetricFamily(
            "thespian_dd_serving", "1 once the store is loaded", labels=["node"]
        )
        serving.add_metric([node], int(stats.serving))
        yield serving
        for field, name, kind, text in _FIGURES:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"thespian_dd_{name}", text, labels=["node"]
            )
            family.add_metric([node], getattr(stats, field))
            yield family
        incompatible = GaugeMetricFamily(
            "thespian_dd_incompatible_peers",
            "peers this node cannot talk to (no protocol or format version in common)",
            labels=["node"],
        )
        incompatible.add_metric([node], len(stats.incompatible_peers))
        yield incompatible
        for field, name, text in [
            ("recovery_time", "recovery_seconds", "seconds from asking the store to serving"),
            ("last_flush", "last_flush_timestamp_seconds", "time of the last store commit"),
        ]:
            value = getattr(stats, field)
            if value is not None:
                gauge = GaugeMetricFamily(f"thespian_dd_{name}", text, labels=["node"])
                gauge.add_metric([node], value)
                yield gauge
