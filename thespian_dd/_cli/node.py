"""``python -m thespian_dd node``: one node in the foreground until SIGTERM or SIGINT.

Safe to get wrong: a bad option, store URL, key file, log configuration or port is one line and
exit status 1 before any process starts, and a store that fails to load is one line once the
node has tried it (a traceback only with ``--debug``); a port that something already listens on
is refused (Thespian would silently join the ActorSystem there, or fail after 11 s).  The node's
processes die with this one, even on ``kill -9``: Thespian's admin daemonises itself, so it
watches a pipe that only this process holds open and kills its process group (itself and every
actor) when the pipe closes.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from thespian.actors import ActorExitRequest, ActorSystem

from thespian_dd._cli.metrics import MetricsServer, require_prometheus
from thespian_dd._peers import NODE_CAPABILITY
from thespian_dd._procs import port_in_use, running
from thespian_dd._runtime.database import (
    StoreError,
    connect_args,
    read_signing_key,
    safe_url,
    store_url,
)
from thespian_dd.messages import GetStats, Stats
from thespian_dd.replicator import CAPABILITY_PREFIX, DescribeProcess, ProcessInfo, start

__all__ = ["NodeError", "log_definitions", "run_node"]

NEEDS_STORE = (
    "signing_key_file",
    "durable_keys",
    "write_mode",
    "write_behind_interval",
    "durable_pruning_marker_ttl",
)
"""Settings that mean something only with a store: refused without one."""

STOP_TIMEOUT = 15.0
"""Seconds a graceful stop waits for the Replicator to exit before shutting the system down."""


class NodeError(Exception):
    """The node cannot start as asked; the message is the one line the operator sees."""


class QuietSQL(logging.Filter):
    """Drops SQLAlchemy's records below WARNING (its SQL statements, at INFO)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("sqlalchemy")


def log_definitions(level: str | None, config_file: str | None) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of the node: the JSON object in ``config_file``, or
    records of ``level`` (default WARNING) and above on stderr, but SQLAlchemy's of WARNING
    and above only (at INFO it logs every SQL statement the store runs: a configuration file
    can ask for them).  Thespian gets the same as its ``logDefs``, so one configuration serves
    both the node's and the actors' logs."""
    if config_file is None:
        return {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"line": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            # A filter on the handler, not a level on the "sqlalchemy" logger: Thespian's actor
            # processes forward every record of the lowest level configured to its logger
            # process, which hands it to the handlers without looking at logger levels.
            "filters": {"sql": {"()": f"{__name__}.{QuietSQL.__name__}"}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "line",
                    "filters": ["sql"],
                }
            },
            "root": {"level": level or "WARNING", "handlers": ["stderr"]},
        }
    try:
        definitions = json.loads(Path(config_file).read_text(encoding="utf-8"))
    except OSError as e:
        raise NodeError(f"cannot read the log configuration {config_file}: {e.strerror}") from e
    except ValueError as e:
        raise NodeError(f"the log configuration {config_file} is not JSON: {e}") from e
    if not isinstance(definitions, dict) or definitions.get("version") != 1:
        raise NodeError(
            f"the log configuration {config_file} must be a JSON object for "
            'logging.config.dictConfig, with "version": 1'
        )
    # dictConfig's default would disable every logger that exists before it runs in this
    # process (SQLAlchemy's, made when it is imported).
    definitions.setdefault("disable_existing_loggers", False)
    return definitions


def _check_store(settings: dict[str, Any]) -> str | None:
    """Refuse, before any process starts, what cannot work: options that need a store given
    without one, an unreadable URL or key file, a URL that SQLAlchemy cannot parse or has no
    driver for, an SQLite file in a missing directory, a server that does not answer.  Returns
    the URL (None: in memory).  Writes nothing: an SQLite file is not even opened (closing a
    connection could checkpoint a crashed node's WAL into a file that then fails to load); a
    server gets one connection, closed before any fork."""
    setting = settings.get("store")
    if setting is None:
        needless = [f"--{name.replace('_', '-')}" for name in NEEDS_STORE if name in settings]
        if needless:
            verb = "needs" if len(needless) == 1 else "need"
            raise NodeError(f"{', '.join(needless)} {verb} a store: add --store or --store-file")
        return None
    try:
        url = store_url(setting)
        if settings.get("signing_key_file"):
            read_signing_key(settings["signing_key_file"])
    except StoreError as e:
        raise NodeError(str(e)) from e
    problem = _unreachable(url)
    if problem:
        raise NodeError(f"cannot open the store {safe_url(url)}: {problem}")
    return url


def _unreachable(url: str) -> str | None:
    """Why the store at ``url`` cannot be opened, as far as can be told without writing, or
    None."""
    engine = None
    try:
        engine = sa.create_engine(url, connect_args=connect_args(url))  # parses, loads the driver
        if engine.dialect.name != "sqlite":
            with engine.connect():
                pass
        elif engine.url.database not in (None, "", ":memory:"):
            directory = Path(str(engine.url.database)).absolute().parent
            if not directory.is_dir():
                return f"no directory {directory}"
    except Exception as e:  # noqa: BLE001 - every cause is reported, as one line
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    finally:
        if engine is not None:
            engine.dispose()
    return None


def _check_ports(port: int, metrics: tuple[str, int] | None) -> None:
    """Refuse a port something listens on, and metrics that cannot be served."""
    problem = port_in_use(port)
    if problem:
        raise NodeError(
            f"port {port} is in use ({problem}): another node or program listens on it; "
            "choose another --port"
        )
    if metrics is not None:
        problem = require_prometheus() or port_in_use(metrics[1], metrics[0])
        if problem:
            raise NodeError(f"--metrics-port {metrics[1]}: {problem}")


def _die_with_this_process() -> None:
    """Make every process Thespian forks from here on die with this one, even on SIGKILL.

    Thespian's admin calls ``setsid`` and forks once more, so it is no child of this process and
    outlives it; its actors share its process group.  The admin (forked by its session's
    leader) watches a pipe whose write end only this process holds: at end of file this process
    is gone, and the admin kills its process group, itself and every actor."""
    read_end, write_end = os.pipe()
    holder = os.getpid()
    # What the child needs to know of its parent, noted in the parent before each fork: the
    # session leader exits at once after forking the admin, so the admin cannot ask it.
    parent = {"pid": holder, "session_leader": False}

    def before() -> None:
        parent["pid"] = os.getpid()
        parent["session_leader"] = os.getsid(0) == os.getpid()

    def in_child() -> None:
        if parent["pid"] == holder:
            os.close(write_end)  # once, in each child of this process; theirs inherit it closed
        elif parent["session_leader"]:
            threading.Thread(target=_kill_group_at_eof, args=(read_end,), daemon=True).start()

    os.register_at_fork(before=before, after_in_child=in_child)


def _kill_group_at_eof(fd: int) -> None:
    while os.read(fd, 1):
        pass
    os.killpg(os.getpgid(0), signal.SIGKILL)


def run_node(  # noqa: PLR0913 - the node command's options
    name: str,
    port: int,
    join: tuple[str, int] | None,
    settings: dict[str, Any],
    out: Callable[[str], object],
    *,
    log_level: str | None = None,
    log_config: str | None = None,
    metrics: tuple[str, int] | None = None,
) -> int:
    """Run the node until SIGTERM or SIGINT; returns the exit status.  Raises
    :class:`NodeError` (before starting anything, where it can) if it cannot run as asked."""
    log_defs = log_definitions(log_level, log_config)
    try:
        logging.config.dictConfig(log_defs)
    except (ValueError, TypeError, AttributeError, ImportError) as e:
        raise NodeError(f"the log configuration is refused by logging: {e}") from e
    _check_ports(port, metrics)
    url = _check_store(settings)
    capabilities = _capabilities(name, port, join, settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    _die_with_this_process()
    asys = ActorSystem("multiprocTCPBase", capabilities, logDefs=log_defs)
    replicator_pid = None
    server: MetricsServer | None = None
    try:
        try:
            replicator = start(asys)
        except (RuntimeError, TimeoutError) as e:
            raise NodeError(str(e)) from e
        info = asys.ask(replicator, DescribeProcess(), 10)
        replicator_pid = info.pid if isinstance(info, ProcessInfo) else None
        pgid = info.pgid if isinstance(info, ProcessInfo) else "?"
        leader = f"{join[0]}:{join[1]}" if join else "itself"
        where = _recovered(asys, replicator, url, settings.get("write_mode", "sync"))
        if metrics is not None:  # before the ready line: a probe may follow it at once
            server = MetricsServer(asys, replicator, *metrics)
            out(f"thespian_dd node {name} metrics: http://{metrics[0]}:{server.port}/metrics")
        # The harness reads the process group from the end of this line: keep it last.
        out(
            f"thespian_dd node {name} ready: port {port}, convention leader {leader}, {where}, "
            f"pid {os.getpid()} (kill -9 of it stops every process of the node), "
            f"actors' process group {pgid}",
        )
        while not stop.wait(0.5):
            pass
        out(f"thespian_dd node {name} stopping")
        if server is not None:
            server.close()
        # The Replicator first: Thespian's admin answers, as it shuts down, every actor
        # creation it forwarded to another node (the Introducers) with a failure, which the
        # Replicator would log as an ERROR.  An exited Replicator hears none of it.
        asys.tell(replicator, ActorExitRequest())
        if replicator_pid is not None:
            _wait_gone(replicator_pid, STOP_TIMEOUT)
    finally:
        asys.shutdown()
    return 0


def _capabilities(
    name: str, port: int, join: tuple[str, int] | None, settings: dict[str, Any]
) -> dict[str, Any]:
    """The node's ActorSystem capabilities; sets the environment Thespian reads."""
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
    return capabilities


def _recovered(asys: Any, replicator: Any, url: str | None, mode: str) -> str:
    """Where the node keeps its data, for the ready line."""
    if url is None:
        return "in memory"
    stats = asys.ask(replicator, GetStats(), 10)
    keys = stats.keys if isinstance(stats, Stats) else "?"
    seconds = stats.recovery_time if isinstance(stats, Stats) else None
    return f"store {safe_url(url)} ({mode}), {keys} keys recovered in {seconds or 0:.3f} s"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
