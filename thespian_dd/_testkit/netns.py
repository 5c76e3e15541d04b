"""Real network partitions for tests: every host in its own Linux network namespace.

:class:`Network` builds ``n`` hosts and a switch, each a network namespace of its own::

    host i (netns tdd<token>-<i>)            switch (netns tdd<token>-sw)
      lo, eth0 = 10.213.0.(i+1)/24  <--veth-->  h<i>  enslaved to bridge br0
      (hardware address 02:74:64:64:00:<i+1>)

Nothing is created in, or changed in, the caller's (root) namespace: the veth pairs are created
in the switch namespace with one end moved straight into the host's.  Because the hosts can reach
nothing but each other, the fixed subnet 10.213.0.0/24 cannot clash with the machine's networks
or with another :class:`Network`; the random token only keeps namespace names apart.

A partition (:meth:`Network.split`) is an nftables rule in each host's namespace that drops, on
input, every packet from a host of another group: senders see silence (TCP retransmits, then a
timeout), never ``connection refused`` or ``EPERM`` as a drop on output or a blackhole route
would give.  The hosts need no ARP: each knows every other's hardware address from the start
(permanent entries, made with the hosts), as if ARP answered across a switch whose IP
traffic is lost.

Needs root (or CAP_SYS_ADMIN and CAP_NET_ADMIN), ``ip`` (iproute2) and ``nft`` (nftables):
:func:`unavailable` says why not, for a pytest skip.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["SUBNET", "Network", "require_network_namespaces", "unavailable"]

SUBNET = "10.213.0"
"""Host ``i`` has address ``f"{SUBNET}.{i + 1}"`` (a /24)."""

_CLONE_NEWNET = 0x40000000
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
# iproute2 and nftables live in sbin, which is not on every PATH.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_TABLE = "tdd"
_NETNS_DIR = "/run/netns"


def _mac(i: int) -> str:
    """Host ``i``'s hardware address (locally administered, ending in its address's last
    byte)."""
    return f"02:74:64:64:00:{i + 1:02x}"


def _tool(name: str) -> str:
    path = shutil.which(name, path=_SEARCH)
    if path is None:
        raise FileNotFoundError(f"`{name}` not found (searched {_SEARCH})")
    return path


def _run(argv: list[str], stdin: str | None = None) -> None:
    """Run ``argv``; ``RuntimeError`` naming the command and its stderr if it fails."""
    result = subprocess.run(  # noqa: S603 - argv built here from fixed tools and our own names
        argv, input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:
        script = f" (script: {stdin.strip()!r})" if stdin else ""
        raise RuntimeError(
            f"`{' '.join(argv)}` failed ({result.returncode}){script}: {result.stderr.strip()}"
        )


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc().setns(fd, _CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns(CLONE_NEWNET): {os.strerror(errno)}")


def _has_capabilities() -> bool:
    with Path("/proc/self/status").open(encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                return all(effective >> cap & 1 for cap in (_CAP_NET_ADMIN, _CAP_SYS_ADMIN))
    return False


@functools.cache
def unavailable() -> str | None:
    """None if this machine can run hosts in network namespaces of their own; otherwise why
    not, in words (for a pytest skip).  Tries it for real once per process: two hosts, a split,
    a heal, and everything removed again."""
    if not Path("/proc/self/ns").is_dir():
        return "network namespaces need Linux"
    if not _has_capabilities():
        return "network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    try:
        _tool("ip")
        _tool("nft")
        with Network(2) as trial:
            trial.split([0], [1])
            trial.heal()
            with trial.inside(1):
                pass
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        return f"cannot build a network of namespaces: {e}"
    return None


def require_network_namespaces() -> None:
    """Skip the calling test if this machine cannot run hosts in network namespaces of their
    own (``Cluster(network=True)``), with the reason; fail it instead when the environment
    variable ``THESPIAN_DD_REQUIRE_NETNS`` is set (where these tests must run)."""
    import pytest

    reason = unavailable()
    if reason:
        if os.environ.get("THESPIAN_DD_REQUIRE_NETNS"):
            pytest.fail(f"{reason}; THESPIAN_DD_REQUIRE_NETNS is set: these tests must run")
        pytest.skip(reason)


class Network:
    """``n`` hosts, each its own network namespace, on one switch (see the module docstring).

    Use it as a context manager, or call :meth:`close`: namespaces outlive the process that made
    them.  Processes started in a host (:meth:`command`) must be stopped by the caller; a
    namespace they still use disappears only when they exit.
    """

    def __init__(self, n: int) -> None:
        """Create everything; on failure remove what was created and raise ``RuntimeError``
        naming the failing command and its stderr."""
        if not 1 <= n <= 253:
            raise ValueError(f"a Network has 1 to 253 hosts, not {n}")
        self._ip = _tool("ip")
        self._nft = _tool("nft")
        prefix = f"tdd{secrets.token_hex(3)}"
        self.hosts = [f"{prefix}-{i}" for i in range(n)]
        """The host namespaces' names, in ``ip netns`` (and under /run/netns)."""
        self.switch = f"{prefix}-sw"
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # the first error is the one to report
                self.close()
            raise

    def _build(self) -> None:
        ip = self._ip
        for name in [self.switch, *self.hosts]:
            _run([ip, "netns", "add", name])
            self._created.append(name)
            _run([ip, "-n", name, "link", "set", "lo", "up"])
        _run([ip, "-n", self.switch, "link", "add", "br0", "type", "bridge"])
        _run([ip, "-n", self.switch, "link", "set", "br0", "up"])
        for i, host in enumerate(self.hosts):
            # Both ends are born in the namespaces they belong to: the root namespace never
            # sees them, so names cannot collide with its interfaces or another Network's.
            port = f"h{i}"
            veth = ["type", "veth", "peer", "name", "eth0", "address", _mac(i), "netns", host]
            _run([ip, "-n", self.switch, "link", "add", port, *veth])
            _run([ip, "-n", self.switch, "link", "set", port, "master", "br0", "up"])
            _run([ip, "-n", host, "addr", "add", f"{self.address(i)}/24", "dev", "eth0"])
            _run([ip, "-n", host, "link", "set", "eth0", "up"])
            self._nft_script(
                i,
                f"add table inet {_TABLE}\n"
                f"add chain inet {_TABLE} input {{ type filter hook input priority 0; }}\n",
            )
        # Every host knows every other's hardware address from the start: the ARP entries of
        # all namespaces share one kernel table, of 1,024 by default (gc_thresh3), which 32
        # hosts of 32 peers fill ("neighbor table overflow"), and a host resolving later reaches
        # nobody.  Permanent entries do not count against that limit.
        for i, host in enumerate(self.hosts):
            entries = "".join(
                f"neigh replace {self.address(j)} lladdr {_mac(j)} dev eth0 nud permanent\n"
                for j in range(len(self.hosts))
                if j != i
            )
            if entries:
                _run([ip, "-n", host, "-batch", "-"], stdin=entries)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.hosts)

    def address(self, i: int) -> str:
        """Host ``i``'s IPv4 address."""
        self._check(i)
        return f"{SUBNET}.{i + 1}"

    def command(self, i: int) -> list[str]:
        """The argv prefix that runs a program inside host ``i``."""
        self._check(i)
        return [self._ip, "netns", "exec", self.hosts[i]]

    @contextlib.contextmanager
    def inside(self, i: int) -> Iterator[None]:
        """The calling thread (only) is in host ``i``'s namespace until the block ends, also on
        an exception; nesting restores each enclosing namespace.  Sockets keep the namespace
        they were created in, so use them, and create them, inside the same host."""
        self._check(i)
        # Each level saves the namespace it came from, so nested blocks unwind correctly.
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"{_NETNS_DIR}/{self.hosts[i]}", os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield
            finally:
                _setns(original)
        finally:
            os.close(original)

    def split(self, *groups: Sequence[int]) -> None:
        """Partition the hosts: packets between hosts of different ``groups`` are dropped
        (silently); a host in no group still talks to every host.  Replaces an earlier split."""
        where: dict[int, int] = {}
        for g, group in enumerate(groups):
            for i in group:
                self._check(i)
                if where.setdefault(i, g) != g:
                    raise ValueError(f"host {i} is in two groups of {groups}")
        for i in range(len(self.hosts)):
            others = sorted(j for j, g in where.items() if i in where and g != where[i])
            rule = ""
            if others:
                sources = ", ".join(self.address(j) for j in others)
                rule = f"add rule inet {_TABLE} input ip saddr {{ {sources} }} drop\n"
            # One script per host: the flush and the new rule apply atomically.
            self._nft_script(i, f"flush chain inet {_TABLE} input\n{rule}")

    def isolate(self, i: int) -> None:
        """Cut host ``i`` off from every other host."""
        self.split([i], [j for j in range(len(self.hosts)) if j != i])

    def heal(self) -> None:
        """Every host talks to every host again."""
        self.split()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has removed every namespace."""
        return not self._created

    def close(self) -> None:
        """Delete every namespace this Network created (again: nothing to do)."""
        errors = []
        while self._created:
            name = self._created.pop()
            try:
                _run([self._ip, "netns", "delete", name])
            except RuntimeError as e:
                if (Path(_NETNS_DIR) / name).exists():
                    errors.append(str(e))
        if errors:
            raise RuntimeError("; ".join(errors))

    def _nft_script(self, i: int, script: str) -> None:
        _run([*self.command(i), self._nft, "-f", "-"], stdin=script)

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self.hosts):
            raise IndexError(f"no host {i} in a Network of {len(self.hosts)}")
