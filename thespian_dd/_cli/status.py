"""``thespian-dd status --node [HOST:]PORT``: what a running node says of itself.

Reads only: it finds the node's Replicator in the admin's table of global names (it never
creates one, as ``createActor`` by global name would on an ActorSystem without it), asks it for
its :class:`~thespian_dd.Stats` and, unless ``--ready``, its :class:`~thespian_dd.Status`, and
leaves the node running.  Thespian's external clients reach only an admin on their own host:
run it on the node's host (or in its container).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from thespian.system.messages.status import Thespian_StatusReq

from thespian_dd._ask import ask
from thespian_dd.client import connect_admin, disconnect
from thespian_dd.messages import GetStats, GetStatus, Stats, Status
from thespian_dd.replicator import REPLICATOR_NAME

__all__ = ["StatusError", "as_json", "local_port", "node_status", "print_status"]


class StatusError(Exception):
    """The node cannot be asked; the message is the one line the operator sees."""


def local_port(node: str) -> int:
    """The admin port of ``[HOST:]PORT``, if HOST is this host (the only one a Thespian client
    can reach); :class:`StatusError` otherwise."""
    host, _, port = node.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise StatusError(f"--node takes [HOST:]PORT, not {node!r}")
    if host and not _is_this_host(host):
        raise StatusError(
            f"{host} is not this host: Thespian reaches only a node on its own host; run "
            "status there (or in the node's container)"
        )
    return int(port)


def _is_this_host(host: str) -> bool:
    if host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn()):
        return True
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((socket.gethostbyname(host), 0))  # only an address of this host binds
    except OSError:
        return False
    return True


def node_status(port: int, timeout: float, *, full: bool = True) -> tuple[Stats, Status | None]:
    """Ask the node on ``port`` of this host for its Stats and (``full``) Status."""
    try:
        asys = connect_admin(port, timeout)
    except ConnectionError as e:
        raise StatusError(str(e)) from None
    try:
        admin = asys.ask(asys._systemBase.adminAddr, Thespian_StatusReq(), timeout)
        replicator = getattr(admin, "globalActors", {}).get(REPLICATOR_NAME)
        if replicator is None:
            raise StatusError(
                f"port {port} is an ActorSystem without a thespian_dd Replicator"
                if admin is not None
                else f"port {port} did not answer as a Thespian admin within {timeout} s"
            )
        stats = ask(asys, replicator, GetStats(), timeout)
        if not isinstance(stats, Stats):
            raise StatusError(f"the node on port {port} did not answer within {timeout} s")
        status = ask(asys, replicator, GetStatus(), timeout) if full else None
        if full and not isinstance(status, Status):
            raise StatusError(f"the node on port {port} did not answer within {timeout} s")
        return stats, status
    finally:
        disconnect(asys)


def print_status(stats: Stats, status: Status, out: Callable[[str], object]) -> None:
    """The status as lines of text."""
    state = "serving" if status.serving else f"NOT SERVING (loaded {status.loaded_rows} rows)"
    recovered = (
        f", recovered in {status.recovery_time:.3f} s" if status.recovery_time is not None else ""
    )
    out(f"node {status.node}: {state}{recovered}")
    reachable = sum(p.reachable for p in status.peers)
    out(f"peers: {len(status.peers)} known, {reachable} reachable")
    for peer in status.peers:
        state = "reachable  " if peer.reachable else "UNREACHABLE"
        versions = f"  [{peer.versions}]" if peer.versions else ""
        out(
            f"  {peer.replica:<32} {state} heard {peer.last_heard:.1f} s ago  {peer.address}"
            + versions
        )
    for problem in status.incompatible_peers:
        out(f"  CANNOT TALK TO {problem}")
    for replica in status.removed:
        out(f"  {replica:<32} removed for good")
    largest = ", ".join(f"{key} {size:,} B" for key, size in status.largest)
    out(
        f"keys: {status.keys} ({status.value_bytes:,} bytes), {status.tombstones} deleted"
        + (f"; largest: {largest}" if largest else "")
    )
    if status.store is None:
        out("store: none (in memory)")
    else:
        flush = (
            f"last commit {time.time() - status.last_flush:.1f} s ago"
            if status.last_flush is not None
            else "no commit yet"
        )
        error = status.store_error or "no error"
        out(
            f"store: {status.store} ({status.write_mode}), {status.store_queue_depth} keys "
            f"queued, {flush}, {error}"
        )
    out(
        f"gossip: {stats.gossip_rounds} rounds, {stats.gossip_bytes_in:,} bytes in, "
        f"{stats.gossip_bytes_out:,} out; {stats.subscribers} subscribers; "
        f"{stats.rejected_inputs} inputs rejected"
    )


def as_json(stats: Stats, status: Status) -> str:
    """The status and the stats as one JSON object (``request`` fields left out)."""

    def fields(reply: Any) -> dict[str, Any]:
        values = dataclasses.asdict(reply)
        values.pop("request", None)
        return values

    return json.dumps({"status": fields(status), "stats": fields(stats)}, indent=2)
