"""Processes and listening ports: what Linux's ``/proc`` shows of them, and whether a port may be
listened on (the node command checks its ports; it and the test harness wait on these).

A process has exited only when every one of its threads has: a process whose first thread is a
zombie may still run other threads, and until the last of them exits the process keeps its open
files, its listening socket included.  ``/proc/PID/stat`` shows only the first thread's state.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

__all__ = ["port_holders", "port_in_use", "running", "running_in_group"]


def _state_and_group(stat: Path) -> tuple[str, int]:
    """A ``/proc/.../stat`` file's state letter and process group."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def running(pid: int) -> bool:
    """Whether a thread of process ``pid`` has not exited yet (zombies and dead ones have)."""
    for task in _entries(Path(f"/proc/{pid}/task")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _state_and_group(task / "stat")[0] not in ("Z", "X"):
                return True
    return False


def _entries(directory: Path) -> list[Path]:
    """What ``directory`` holds now; nothing if it is gone (a process reaped while it is read)
    or may not be read."""
    try:
        return list(directory.iterdir())  # read whole here: a vanished one raises here
    except OSError:
        return []


def running_in_group(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that still run (see :func:`running`); empty if none."""
    pids = []
    for proc in _processes():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _state_and_group(proc / "stat")[1] == pgid and running(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def _processes() -> list[Path]:
    """The /proc directory of each process now."""
    return [entry for entry in _entries(Path("/proc")) if entry.name.isdigit()]


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on TCP ``port`` (any address, IPv4 or IPv6) in this
    process's network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def port_holders(port: int) -> list[str]:
    """What listens on TCP ``port`` in this network namespace: ``pid N: command line`` for each
    process holding such a socket that this user may look into, ``a socket no process of this
    user holds`` for one whose holder cannot be seen; empty when nothing listens."""
    inodes = _listening_inodes(port)
    holders, seen = [], set()
    for proc in _processes() if inodes else ():
        # A zombie first thread shows no files: the process's other threads still do.
        links = _files(proc)
        where = proc
        for task in () if links else _entries(proc / "task"):
            where, links = task, _files(task)
            if links:
                break
        held = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
        if held & inodes:
            seen |= held & inodes
            with contextlib.suppress(OSError):
                command = (where / "cmdline").read_bytes().replace(b"\0", b" ")
                holders.append(f"pid {proc.name}: {command.decode(errors='replace').strip()}")
    holders += ["a socket no process of this user holds"] * len(inodes - seen)
    return holders


def _files(task: Path) -> list[str]:
    """What the descriptors open in ``task`` (a process's or thread's /proc directory) point to,
    as far as this user may see (one closed while they are read is left out)."""
    links = []
    for fd in _entries(task / "fd"):
        with contextlib.suppress(OSError):
            links.append(str(fd.readlink()))
    return links


def port_in_use(port: int, host: str = "") -> str | None:
    """Why nothing may listen on ``port`` of ``host`` (every address: "") now, or None.  A
    socket in TIME_WAIT does not count (SO_REUSEADDR, as Thespian binds); a listener on any
    address does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError as e:
            return e.strerror or str(e)
    return None
