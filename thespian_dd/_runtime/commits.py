"""The commit thread: sync batches committed on a thread of the Replicator's own process (see
:class:`CommitThread`), where Thespian can wake the actor for their answers."""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import threading
import time
from collections.abc import Callable

from thespian_dd._runtime.database import read_signing_key
from thespian_dd._runtime.store import Store
from thespian_dd._runtime.writer import Write, Written, commit

__all__ = ["HERE_AT_MOST", "CommitThread"]

HERE_AT_MOST = 0.01
"""A commit here holds the Replicator for as long as it takes: once one takes longer than this
many seconds (a slow disk, another program holding SQLite's write lock), batches go to the
thread until one is committed within it again."""


def _write_holding_the_gil() -> Callable[[int, bytes, int], int] | None:
    """libc's ``write(fd, buffer, size)`` called without releasing the GIL (ctypes' ``PyDLL``;
    ``os.write`` releases it), or None where there is no such libc."""
    try:
        write = ctypes.PyDLL(None).write
    except (OSError, AttributeError, TypeError):
        return None
    write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
    write.restype = ctypes.c_ssize_t
    return write


_WRITE_HOLDING_THE_GIL = _write_holding_the_gil()


class CommitThread:
    """Commits :class:`Write` batches on a thread of the Replicator's own process, as the
    DurableWriter would: it saves a sync write the two messages to and from another process,
    which cost as much as the commit.  The Replicator :meth:`submit` s a batch; the thread
    commits it, puts its :class:`Written` in a queue and writes a byte to a pipe whose read end
    (:attr:`fd`) the Replicator watches (``ThespianWatch``), so it gets a ``WatchMessage`` and
    :meth:`drain` s the answers.  Batches are committed in the order submitted.

    A batch may also be committed on the caller's thread (:meth:`commit_here`) when nothing
    submitted is unanswered and the last commit was quick: no wake-up, no pipe and no thread
    taking the GIL in turn with the Replicator's.

    Forks: an actor creates its children by forking its own process, and a fork while another
    thread holds a lock (of SQLite, of logging) or an open connection leaves the child with a
    lock nobody releases and a connection it must not touch.  So the Replicator :meth:`pause` s
    the thread around every ``createActor``: the thread finishes what was submitted, closes the
    store and ends; the next :meth:`submit` starts a new one, which opens the store again.

    A thread that dies mid-commit (it cannot be killed from outside, but an exception that is
    not an ``Exception`` ends it) answers that batch with a failure on its way out, so the
    Replicator's usual retry after a failed commit (with backoff, answering every client
    waiting) starts a new thread."""

    def __init__(self, here_at_most: float = HERE_AT_MOST) -> None:
        # A batch, or the thread that is to end when it reads it (another thread skips it: a
        # thread that ended mid-commit leaves its own unread).
        self._jobs: queue.SimpleQueue[Write | threading.Thread] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[Written] = queue.SimpleQueue()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)  # a full pipe has a byte unread: enough
        self._thread: threading.Thread | None = None
        self._ended: threading.Thread | None = None  # a thread that ended mid-commit
        self._store: Store | None = None  # used by one thread at a time, holding _busy
        self._busy = threading.Lock()
        self._unanswered = 0  # batches submitted and not yet drained (the caller's count)
        self._here_at_most = here_at_most
        self._last_took = 0.0  # seconds the last commit took, here or on the thread

    @property
    def fd(self) -> int:
        """The descriptor that becomes readable when an answer is waiting."""
        return self._read_fd

    def running(self) -> bool:
        """Whether the thread exists (a fork now would copy it)."""
        return self._thread is not None and self._thread.is_alive()

    def commit_here(self, msg: Write) -> Written | None:
        """Commit ``msg``'s batch on the caller's thread and return its :class:`Written`, if
        nothing submitted is unanswered, the thread has opened a SQLite file (not an in-memory
        SQLite, a database per thread; not a server, whose commit can stall with the network
        and would stall the Replicator with it) and the last commit took at most
        ``here_at_most`` seconds (:data:`HERE_AT_MOST` unless given); else None, and the caller
        :meth:`submit` s it.  It saves the thread's wake-up, the Replicator's extra turn of its
        loop to see the pipe and the two threads taking the GIL in turn, and holds the
        Replicator for the commit (see :class:`~thespian_dd._runtime.durability.Durability`)."""
        store = self._store
        if (
            self._unanswered
            or store is None
            or not store.on_this_machine
            or self._last_took > self._here_at_most
        ):
            return None
        # Free: the thread commits only what is unanswered.  Held all the same, so the store is
        # used by one thread at a time whatever the caller does.
        with self._busy:
            if self._store is not store:
                return None
            return self._commit(msg)

    def submit(self, msg: Write) -> None:
        """Commit ``msg``'s batch after those submitted before; its :class:`Written` follows."""
        self._unanswered += 1
        if self._thread is not None and self._thread is self._ended:
            self._thread.join()  # it answered its last batch and is ending: no longer reading
        if not self.running():
            self._thread = threading.Thread(target=self._run, name="thespian_dd commits")
            self._thread.daemon = True
            self._thread.start()
        self._jobs.put(msg)

    def drain(self) -> list[Written]:
        """The answers waiting (the pipe read empty first, so none is left unsignalled)."""
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        answers = []
        while True:
            try:
                answers.append(self._results.get_nowait())
            except queue.Empty:
                self._unanswered -= len(answers)
                return answers

    def pause(self) -> None:
        """Let the thread commit what was submitted, close the store and end (the next
        :meth:`submit` starts another): nothing is left in another thread for a fork to copy."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(thread)
            thread.join()  # it closed the store, which a commit here never opens

    def stop(self) -> None:
        """:meth:`pause`, then close the pipe: for the Replicator's exit, after its last batch
        was submitted."""
        self.pause()
        for fd in (self._read_fd, self._write_fd):
            os.close(fd)

    def _run(self) -> None:
        pending: Write | None = None
        me = threading.current_thread()
        try:
            while (job := self._jobs.get()) is not me:
                if isinstance(job, threading.Thread):
                    continue  # the end of a thread that ended before reading it
                pending = job
                with self._busy:
                    written = self._commit(job)
                pending = None
                self._answer(written)
        finally:
            with self._busy:
                self._close()
            if pending is not None:  # ended by what is not an Exception, mid-commit
                self._ended = threading.current_thread()
                self._answer(Written(pending.seq, "the commit thread ended mid-commit"))

    def _commit(self, msg: Write) -> Written:
        """Commit ``msg``'s batch (holding ``_busy``), timed: unless it opened the store (its
        tables created or checked), which says nothing of how long a commit takes (the time of
        the commit before it stands)."""
        was_open = self._store is not None
        started = time.perf_counter()
        try:
            return commit(msg, self._open, self._close)
        finally:
            if was_open:
                self._last_took = time.perf_counter() - started

    def _answer(self, written: Written) -> None:
        """Queue ``written`` and wake the Replicator.  The byte is written without releasing
        the GIL: with ``os.write`` the Replicator's thread, woken by the byte, often took the GIL
        before this thread had it back, and the two then took turns at each of the Replicator's
        system calls (the pipe's read, the reply's send), a thread wake-up each.  Now this thread
        holds it until it waits for its next batch, a few bytecodes later."""
        self._results.put(written)
        write = _WRITE_HOLDING_THE_GIL
        if write is None or write(self._write_fd, b"!", 1) != 1:
            # Not written (or no such libc): os.write says why, but for a full pipe, which
            # holds bytes the Replicator has yet to read: it will drain.
            with contextlib.suppress(BlockingIOError):
                os.write(self._write_fd, b"!")

    def _open(self, url: str, signing_key_file: str | None) -> Store:
        if self._store is None:
            key = read_signing_key(signing_key_file) if signing_key_file else None
            self._store = Store(url, signing_key=key)
        return self._store

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
