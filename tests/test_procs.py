"""thespian_dd._procs: whether a process runs and what listens on a port, as /proc shows them."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from thespian_dd._procs import port_holders, port_in_use, running, running_in_group
from thespian_dd.testing import eventually

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc"),
]

# The first thread ends (pthread_exit) while a second one waits for stdin to close, holding a
# socket that listens on a port of its own choosing, printed with the pid.
FIRST_THREAD_ENDS = """
import ctypes, os, socket, sys, threading

listener = socket.create_server(("127.0.0.1", 0))
threading.Thread(target=sys.stdin.read).start()
print(os.getpid(), listener.getsockname()[1], flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.subprocess
def test_a_process_whose_first_thread_is_a_zombie_runs_while_another_thread_does() -> None:
    """Found while looking into a restart that found its port in use: the harness took a
    process for gone once ``/proc/PID/stat`` said zombie, and that file shows the first
    thread's state only.  A process whose first thread has exited reads as a zombie while its
    other threads still run and keep its files open, a listening socket too."""
    child = subprocess.Popen(
        [sys.executable, "-c", FIRST_THREAD_ENDS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    with child, child.stdin:  # on any failure: the second thread returns, the process exits
        pid, port = map(int, child.stdout.readline().split())
        eventually(lambda: _state(pid) == "Z", what="the first thread a zombie")
        assert running(pid)
        assert running_in_group(pid) == [pid]  # a session's leader leads its group
        assert port_holders(port) == [f"pid {pid}: {sys.executable} -c {FIRST_THREAD_ENDS}".strip()]
        assert port_in_use(port) is not None

        child.stdin.close()  # the second thread returns: the process exits, not reaped yet
        eventually(lambda: not running(pid), what="every thread exited")
        assert _state(pid) == "Z"
        assert running_in_group(pid) == []
        assert port_holders(port) == []
        assert port_in_use(port) is None
    assert not running(pid)  # reaped: no /proc entry at all


@pytest.mark.parametrize(
    ("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_what_listens_on_a_port_is_named_and_nothing_once_it_closes(
    family: socket.AddressFamily, address: str
) -> None:
    try:
        listener = socket.create_server((address, 0), family=family)
    except OSError as e:
        pytest.skip(f"no {address} here: {e}")
    with listener:
        port = listener.getsockname()[1]
        holders = port_holders(port)
        assert len(holders) == 1
        assert holders[0].startswith(f"pid {os.getpid()}: ")
        with socket.create_connection((address, port)):  # a connection is no listener
            assert port_holders(port) == holders
    assert port_holders(port) == []


def test_a_port_in_use_says_why_and_a_free_one_is_none() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert port_in_use(port) == os.strerror(errno.EADDRINUSE)
    assert port_in_use(port) is None


def test_a_thread_that_runs_keeps_its_process_running() -> None:
    assert running(os.getpid())
    assert os.getpid() in running_in_group(os.getpgid(0))
    assert not running(2**22 + 1)  # above Linux's highest pid: no such process, no error
    assert running_in_group(2**22 + 1) == []
