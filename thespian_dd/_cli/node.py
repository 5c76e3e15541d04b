"""``python -m thespian_dd node``: one node in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import os
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from thespian.actors import ActorSystem

from thespian_dd._peers import NODE_CAPABILITY
from thespian_dd._runtime.store import safe_url
from thespian_dd.messages import GetStats, Stats
from thespian_dd.replicator import CAPABILITY_PREFIX, DescribeProcess, ProcessInfo, start

__all__ = ["run_node"]


def run_node(
    name: str,
    port: int,
    join: tuple[str, int] | None,
    settings: dict[str, Any],
    out: Callable[[str], object],
) -> int:
    # Thespian logs to a file of its own; keep it per node, and warnings only.
    log_dir = Path(tempfile.gettempdir())
    os.environ.setdefault("THESPLOG_FILE", str(log_dir / f"thespian_dd-{name}-{port}.log"))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")
    # Members re-register with the convention leader every few seconds (Thespian's default is
    # minutes), so a restarted leader hears of them, and its Replicator meets them, quickly.
    # Both must be set: a short re-registration period alone makes the leader drop healthy
    # members (see the project notes).
    os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", "0:02")
    os.environ.setdefault("CONVENTION_RESTART_PERIOD", "0:01")
    # Settings travel as capabilities: a peer's Introducer may create this node's Replicator
    # before our own start() reaches it, and it must start with the same settings.
    capabilities: dict[str, Any] = {"Admin Port": port, NODE_CAPABILITY: name}
    capabilities.update({CAPABILITY_PREFIX + k: v for k, v in settings.items()})
    if join is not None:
        capabilities["Convention Address.IPv4"] = join
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    asys = ActorSystem("multiprocTCPBase", capabilities, logDefs=None)
    try:
        replicator = start(asys)
        info = asys.ask(replicator, DescribeProcess(), 10)
        pgid = info.pgid if isinstance(info, ProcessInfo) else "?"
        leader = f"{join[0]}:{join[1]}" if join else "itself"
        store = settings.get("store")
        if store:
            stats = asys.ask(replicator, GetStats(), 10)
            keys = stats.keys if isinstance(stats, Stats) else "?"
            seconds = stats.recovery_time if isinstance(stats, Stats) else None
            recovered = f"{keys} keys recovered in {seconds or 0:.3f} s"
            where = f"store {safe_url(store)} ({settings.get('write_mode', 'sync')}), {recovered}"
        else:
            where = "in memory"
        # The harness reads the process group from the end of this line: keep it last.
        out(
            f"thespian_dd node {name} ready: port {port}, convention leader {leader}, {where}, "
            f"pid {os.getpid()}, actors' process group {pgid}",
        )
        while not stop.wait(0.5):
            pass
        out(f"thespian_dd node {name} stopping")
    finally:
        asys.shutdown()
    return 0
