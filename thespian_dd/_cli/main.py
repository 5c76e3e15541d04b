"""Command line: ``thespian-dd {demo,node,status,inspect,forget-node,backup,restore,migrate,
bench}`` (also ``python -m thespian_dd``): the argument parser; each command runs in a module of
its own."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from thespian_dd import __version__

__all__ = ["main"]


def _store_location(command: argparse.ArgumentParser) -> None:
    """The store a command reads or writes: ``--store URL`` or ``--store-file FILE``."""
    where = command.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="URL", help="SQLAlchemy URL")
    where.add_argument("--store-file", metavar="FILE", help="read the URL from FILE's first line")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Akka-style Distributed Data for Thespian: replicated, durable CRDTs.",
    )
    parser.add_argument("--version", action="version", version=f"thespian_dd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="a durable 3-node cluster keeps a shop's state through a full-cluster kill -9",
        description="Start 3 real nodes (each its own process group and SQLite file), edit a "
        "shopping cart, an address, hit counters and a feature flag concurrently, kill every "
        "process with SIGKILL, restart the nodes from their stores and compare every value. "
        "Stops every process it started, also on Ctrl-C.",
    )
    demo.add_argument(
        "--dir",
        metavar="DIR",
        help="keep the nodes' SQLite files and logs here (default: a "
        "temporary directory, removed afterwards)",
    )
    demo.set_defaults(run=_run_demo)

    node = commands.add_parser(
        "node",
        help="run one node (an ActorSystem with its Replicator) until SIGTERM or SIGINT",
        description="Run one node in the foreground: a multiprocTCPBase ActorSystem on --port "
        "with its Replicator. Without --join the node leads a convention; with --join it joins "
        "the leader's. Stops gracefully on SIGTERM or SIGINT.",
    )
    node.add_argument("--name", required=True, help="the node's name (unique in the cluster)")
    node.add_argument("--port", required=True, type=_port, help="the ActorSystem's admin port")
    node.add_argument(
        "--join", type=_host_port, metavar="HOST:PORT", help="the convention leader's admin address"
    )
    where = node.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        metavar="URL",
        help="SQLAlchemy URL of the durable store, e.g. sqlite:///n1.db (default: in memory)",
    )
    where.add_argument(
        "--store-file",
        metavar="FILE",
        help="read the store's URL from the first line of FILE, so a password stays out of "
        "the command line, and out of what the node tells its peers",
    )
    node.add_argument(
        "--signing-key-file",
        metavar="FILE",
        help="with --store, sign every stored row with the secret held in FILE (HMAC-SHA256) "
        "and refuse, at load, rows that do not verify (default: a checksum only)",
    )
    node.add_argument(
        "--durable-keys",
        type=_patterns,
        metavar="PATTERNS",
        help="with --store, the keys that persist: comma-separated keys or prefix* patterns "
        "(default: *, every key)",
    )
    node.add_argument(
        "--expire-keys-after-inactivity",
        type=_expiries,
        metavar="RULES",
        help="keys removed after SECONDS without an update or read: comma-separated "
        "KEY=SECONDS or PREFIX*=SECONDS (default: none)",
    )
    node.add_argument(
        "--data-types",
        type=_modules,
        metavar="MODULES",
        help="comma-separated modules to import before the node reads anything: those that "
        "register data types of your own (default: none)",
    )
    node.add_argument(
        "--write-mode",
        choices=["sync", "write-behind"],
        help="sync: acknowledge an update once committed (default); write-behind: acknowledge "
        "at once and commit every --write-behind-interval seconds and on stop",
    )
    for setting, help_text in [
        ("write-behind-interval", "seconds between write-behind commits (default 1.0)"),
        ("gossip-interval", "seconds between gossip rounds (default 2.0)"),
        (
            "delta-interval",
            "seconds between delta propagations, each to a few peers, 0 for none (default 0.2)",
        ),
        ("notify-interval", "seconds between notifications to subscribers (default 0.5)"),
        ("failure-timeout", "seconds of silence before a peer is unreachable (default 10)"),
        ("removal-timeout", "seconds unreachable before a peer is removed for good (default 300)"),
        ("pruning-interval", "seconds between pruning rounds (default 120)"),
        (
            "max-pruning-dissemination",
            "seconds a replica must be seen removed before it is pruned (default 300)",
        ),
        ("pruning-marker-ttl", "seconds a pruning marker is kept, keys in memory (default 6 h)"),
        (
            "durable-pruning-marker-ttl",
            (
                "seconds a pruning marker is kept, durable keys (default 10 days); a node "
                "offline longer is refused until forget-node empties its store"
            ),
        ),
    ]:
        node.add_argument(f"--{setting}", type=float, help=help_text)
    for setting, help_text in [
        ("max-value-bytes", "largest encoded value taken from a peer (default 16 MiB)"),
        ("max-gossip-bytes", "budget of values in one gossip message (default 512 KiB)"),
    ]:
        node.add_argument(f"--{setting}", type=int, help=help_text)
    # TEST ONLY (the test kit's Cluster passes it): obey PartitionForTests.  Not in --help.
    node.add_argument(
        "--test-partitions", action="store_true", default=None, help=argparse.SUPPRESS
    )
    logs = node.add_mutually_exclusive_group()
    logs.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="log records of this level and above to stderr, the actors' too (default WARNING)",
    )
    logs.add_argument(
        "--log-config",
        metavar="FILE",
        help="a JSON logging.config.dictConfig object configuring the node's and its actors' logs",
    )
    node.add_argument(
        "--debug", action="store_true", help="print a traceback with an error that stops the node"
    )
    _add_metrics(node)
    node.set_defaults(run=_run_node)
    _add_status(commands)

    inspect = commands.add_parser(
        "inspect",
        help="print what a store holds: nodes, keys, types, sizes, values, updated-at",
        description="Print the nodes of a durable store and the rows each has stored (reads "
        "only). Rows that fail their checksum or MAC, or do not decode, are shown as UNREADABLE.",
    )
    _store_location(inspect)
    inspect.add_argument(
        "--signing-key-file",
        metavar="FILE",
        help="the nodes' signing key: verify each row's MAC with it (needed to read a signed "
        "store)",
    )
    inspect.add_argument("--node", metavar="NAME", help="only this node's rows")
    inspect.add_argument("--key", metavar="KEY", help="only this key, with its whole value")
    inspect.add_argument(
        "--data-types",
        type=_modules,
        metavar="MODULES",
        help="comma-separated modules that register data types of your own, as the nodes' "
        "--data-types (their rows are UNREADABLE without them)",
    )
    inspect.set_defaults(run=_run_inspect)

    _add_forget(commands)
    _add_backup(commands)

    bench = commands.add_parser(
        "bench",
        help="measure throughput and sizes against baselines taken in the same run",
        description="Run the benchmark sections and print each figure, its baseline measured "
        "in the same run, and their ratio.",
    )
    bench.add_argument(
        "--section",
        action="append",
        choices=["crdt", "replicator", "durable", "pruning", "scale"],
        help="run only this section (repeatable; default: all but scale, which takes minutes)",
    )
    bench.add_argument(
        "--nodes",
        type=int,
        default=32,
        help="nodes of the scale section's large cluster (default: %(default)s)",
    )
    bench.add_argument(
        "--sizes",
        default="1000,10000,100000",
        help="element counts for the crdt section, comma-separated (default: %(default)s)",
    )
    bench.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply the replicator, durable and scale sections' message and key counts "
        "(default: %(default)s)",
    )
    bench.add_argument(
        "--postgresql",
        metavar="URL",
        default=os.environ.get("THESPIAN_DD_TEST_POSTGRESQL_URL"),
        help="a PostgreSQL URL whose user may create databases: the durable section also "
        "measures PostgreSQL (default: $THESPIAN_DD_TEST_POSTGRESQL_URL)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    bench.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw throughput by write mode and recovery time by key count (the durable "
        "section) into FILE.png; needs matplotlib (the plot extra)",
    )
    bench.set_defaults(run=_run_bench)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from thespian_dd._cli.demo import run_demo

    try:
        return run_demo(print, args.dir)
    except KeyboardInterrupt:
        print("demo: interrupted; its nodes are stopped")
        return 130


def _add_metrics(node: argparse.ArgumentParser) -> None:
    node.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve /metrics (Prometheus; needs the prometheus extra), /ready and /alive over "
        "HTTP on this port",
    )
    node.add_argument(
        "--metrics-host",
        default="0.0.0.0",  # noqa: S104 - a scrape comes from another host
        metavar="ADDRESS",
        help="the address --metrics-port listens on (default: %(default)s, every interface)",
    )


def _add_forget(commands: Any) -> None:
    forget = commands.add_parser(
        "forget-node",
        help="remove a stopped node's rows and record from a store, so it rejoins empty",
        description="Remove every row of a node and its node record (incarnation, last "
        "commit) from a durable store, in one transaction.  For a node refused at start "
        "because it was offline longer than durable_pruning_marker_ttl: started again, it "
        "rejoins empty and gets the data from its peers.  Stop the node first.",
    )
    _store_location(forget)
    forget.add_argument("--node", required=True, metavar="NAME", help="the node to forget")
    forget.set_defaults(run=_run_forget)


def _add_backup(commands: Any) -> None:
    backup = commands.add_parser(
        "backup",
        help="copy a store into a new SQLite file, consistently, while its nodes run",
        description="Copy every node record and row of a durable store into a new SQLite file "
        "(SQLite's online backup for an SQLite store, one REPEATABLE READ transaction for a "
        "server), while its nodes run. The file is a store itself: inspect reads it, restore "
        "copies it into an empty store.",
    )
    _store_location(backup)
    backup.add_argument("--to", required=True, metavar="PATH", help="the new file (must not exist)")
    backup.set_defaults(run=_run_backup)
    restore = commands.add_parser(
        "restore",
        help="copy a backup into an empty store (its nodes stopped)",
        description="Copy a backup made by the backup command into a store with no node and no "
        "row (a new database, or one whose nodes were forgotten), in one transaction. Nodes "
        "started on it recover the backup's state and get what they missed from their peers; "
        "a backup older than durable_pruning_marker_ttl is refused at start like any node "
        "offline that long.",
    )
    restore.add_argument("--from", dest="source", required=True, metavar="PATH", help="a backup")
    _store_location(restore)
    restore.set_defaults(run=_run_restore)
    migrate = commands.add_parser(
        "migrate",
        help="upgrade a store's schema and every row to this release's codec format",
        description="Bring a durable store to this release: create a table missing, apply the "
        "schema changes since the store's schema version, and write every row of an earlier "
        "codec format in the current one (a node reads earlier formats anyway, and upgrades a "
        "key's row when it next writes it). One transaction where the database allows it "
        "(MariaDB/MySQL commit a created table at once); running it twice changes nothing. "
        "Rows that fail their checks are left as they are and named (exit status 1).",
    )
    _store_location(migrate)
    migrate.add_argument(
        "--signing-key-file",
        metavar="FILE",
        help="the nodes' signing key, if their rows are signed (rows are sealed anew)",
    )
    migrate.set_defaults(run=_run_migrate)


def _add_status(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="what a running node says of itself: peers, keys, store (reads only)",
        description="Ask a node on this host for its status: its name and incarnation, its "
        "peers with reachability and when each was last heard, its keys and their sizes, its "
        "store and queue, its recovery time. Reads only; the node keeps running.",
    )
    status.add_argument(
        "--node", required=True, metavar="[HOST:]PORT", help="the node's admin port (this host)"
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument(
        "--ready",
        action="store_true",
        help="print nothing and exit 0 only if the node serves (its store loaded): a probe",
    )
    status.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="default: %(default)s"
    )
    status.set_defaults(run=_run_status)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host, _port(port)


def _patterns(text: str) -> list[str]:
    patterns = [p.strip() for p in text.split(",")]
    if not all(patterns):
        raise argparse.ArgumentTypeError(f"expected comma-separated keys or patterns: {text!r}")
    return patterns


def _modules(text: str) -> list[str]:
    modules = [m.strip() for m in text.split(",")]
    if not all(modules):
        raise argparse.ArgumentTypeError(f"expected comma-separated module names: {text!r}")
    return modules


def _expiries(text: str) -> dict[str, float]:
    rules = {}
    for rule in text.split(","):
        pattern, sep, seconds = rule.strip().rpartition("=")
        try:
            rules[pattern] = float(seconds)
        except ValueError:
            sep = ""
        if not sep or not pattern:
            raise argparse.ArgumentTypeError(f"expected KEY=SECONDS rules, not {rule!r}")
    return rules


def _run_node(args: argparse.Namespace) -> int:
    from thespian_dd._cli.node import NodeError, run_node
    from thespian_dd.replicator import Settings

    settings = {
        name: value
        for name in sorted(Settings.names() - {"node_name"})
        if (value := getattr(args, name, None)) is not None
    }
    if args.store_file is not None:
        settings["store"] = _store(args)  # only this reference travels in capabilities

    try:
        Settings.from_mapping({"node_name": args.name, **settings})
    except (TypeError, ValueError) as e:
        raise SystemExit(f"node: {e}") from None
    try:
        return run_node(
            args.name,
            args.port,
            args.join,
            settings,
            print,
            log_level=args.log_level,
            log_config=args.log_config,
            metrics=(args.metrics_host, args.metrics_port) if args.metrics_port else None,
        )
    except NodeError as e:
        if args.debug:
            raise
        raise SystemExit(f"node: {e}") from None
    except Exception as e:
        if args.debug:
            raise
        raise SystemExit(f"node: {type(e).__name__}: {e} (--debug for the traceback)") from None


def _store(args: argparse.Namespace) -> str:
    """The store named by ``--store URL`` or ``--store-file FILE`` (as ``file:/abs/FILE``: the
    URL is read where the store is opened)."""
    from pathlib import Path

    from thespian_dd._runtime.database import STORE_FILE_PREFIX

    if args.store_file is None:
        return str(args.store)
    return STORE_FILE_PREFIX + str(Path(args.store_file).absolute())


def _run_inspect(args: argparse.Namespace) -> int:
    from thespian_dd._cli.inspect import inspect_store
    from thespian_dd._runtime.database import StoreError, read_signing_key
    from thespian_dd.replicator import Settings

    try:
        Settings.from_mapping({"data_types": args.data_types or ()})
    except ValueError as e:
        raise SystemExit(f"inspect: {e}") from None
    try:
        key = read_signing_key(args.signing_key_file) if args.signing_key_file else None
        return inspect_store(_store(args), args.node, args.key, print, signing_key=key)
    except StoreError as e:
        raise SystemExit(f"inspect: {e}") from None


def _run_status(args: argparse.Namespace) -> int:
    from thespian_dd._cli.status import (
        StatusError,
        as_json,
        local_port,
        node_status,
        print_status,
    )

    try:
        port = local_port(args.node)
        stats, status = node_status(port, args.timeout, full=not args.ready)
    except StatusError as e:
        raise SystemExit(f"status: {e}") from None
    if args.ready:
        if not stats.serving:
            raise SystemExit(f"status: not serving: {stats.store_error or 'loading its store'}")
        return 0
    assert status is not None
    if args.json:
        print(as_json(stats, status))
    else:
        print_status(stats, status, print)
    return 0


def _run_backup(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thespian_dd._runtime.backup import backup
    from thespian_dd._runtime.database import StoreError, safe_url

    try:
        nodes, rows = backup(_store(args), Path(args.to))
    except StoreError as e:
        raise SystemExit(f"backup: {e}") from None
    print(f"backed up {nodes} nodes and {rows} rows of {safe_url(_store(args))} into {args.to}")
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thespian_dd._runtime.backup import restore
    from thespian_dd._runtime.database import StoreError, safe_url

    try:
        nodes, rows = restore(Path(args.source), _store(args))
    except StoreError as e:
        raise SystemExit(f"restore: {e}") from None
    print(
        f"restored {nodes} nodes and {rows} rows from {args.source} into {safe_url(_store(args))}"
    )
    return 0


def _run_migrate(args: argparse.Namespace) -> int:
    from thespian_dd._cli.migrate import migrate_store
    from thespian_dd._runtime.database import StoreError, read_signing_key

    try:
        key = read_signing_key(args.signing_key_file) if args.signing_key_file else None
        return migrate_store(_store(args), print, signing_key=key)
    except StoreError as e:
        raise SystemExit(f"migrate: {e}") from None


def _run_forget(args: argparse.Namespace) -> int:
    from thespian_dd._cli.forget import forget_node
    from thespian_dd._runtime.database import StoreError

    try:
        return forget_node(_store(args), args.node, print)
    except StoreError as e:
        raise SystemExit(f"forget-node: {e}") from None


def _run_bench(args: argparse.Namespace) -> int:
    from thespian_dd._cli.bench import SECTIONS, run_bench

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"bench: --sizes takes comma-separated ints, not {args.sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit("bench: --sizes needs at least one count >= 1")
    if not args.scale > 0:
        raise SystemExit("bench: --scale must be > 0")
    if args.nodes < 3:
        raise SystemExit("bench: --nodes must be at least 3")
    sections = args.section or [s for s in SECTIONS if s != "scale"]
    if args.plot and "durable" not in sections:
        raise SystemExit("bench: --plot draws the durable section: add --section durable")
    results = run_bench(
        sections,
        sizes=sizes,
        scale=args.scale,
        json_path=args.json,
        out=print,
        postgresql=args.postgresql,
        nodes=args.nodes,
    )
    if args.plot:
        from thespian_dd._cli.plot import plot_results

        plot_results(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "thespian-dd") -> int:
    """Run the command in ``argv`` (default: ``sys.argv[1:]``) and return its exit status;
    ``prog`` is the name the help and errors show (``python -m thespian_dd`` passes its own)."""
    args = _parser(prog).parse_args(argv)
    result: int = args.run(args)
    return result
