"""The CommitThread (:mod:`thespian_dd._runtime.commits`), which commits sync batches in the
Replicator's own process, on a real SQLite file: answers through its pipe in order, on through a
full pipe, failures, a pause that leaves nothing for a fork to copy, a thread that ends
mid-commit, and batches committed on the caller's thread while its commits are quick."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import server_database
from fakes import commit_answers, stored_rows

from thespian_dd import GCounter
from thespian_dd._runtime.commits import HERE_AT_MOST, CommitThread
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.writer import Write, Written
from thespian_dd._testkit.harness import eventually
from thespian_dd.codec import encode

pytestmark = pytest.mark.timeout(60)

ENTRY = Entry("GCounter", encode(GCounter()), "")


def _open_files() -> set[str]:
    return {str(fd.resolve()) for fd in Path("/proc/self/fd").iterdir()}


@pytest.fixture
def commits() -> Iterator[CommitThread]:
    """A CommitThread that commits here however long its last commit took (this machine runs
    other tests meanwhile): the bound has a test of its own."""
    thread = CommitThread(here_at_most=60.0)
    try:
        yield thread
    finally:
        thread.stop()


def test_the_commit_thread_commits_batches_in_order_and_answers_each_through_its_pipe(
    commits: CommitThread, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    for seq, key in enumerate("abc", start=1):
        commits.submit(Write(url, "n", seq, {key: ENTRY}))
    assert commit_answers(commits, 3) == [Written(1), Written(2), Written(3)]
    assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abc"]
    assert commits.drain() == []  # the pipe read empty with the answers: nothing is left


def test_the_commit_thread_answers_on_through_a_full_pipe(
    commits: CommitThread, tmp_path: Path
) -> None:
    """The wake-up byte is written without blocking: with the pipe full (bytes the Replicator
    has yet to read) an answer is queued all the same, and the next drain gets every one."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    for size in (4096, 1):  # to the last byte: a write of up to 4096 is all or nothing
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(commits._write_fd, b"!" * size)
    for seq, key in enumerate("ab", start=1):
        commits.submit(Write(url, "n", seq, {key: ENTRY}))
    thread = commits._thread

    def committed() -> int:  # read by sqlite3 alone: a Store here would create tables too
        with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM thespian_dd_entries").fetchone()[0])
            except sqlite3.OperationalError:
                return 0  # no table yet

    eventually(lambda: committed() == 2, what="both batches committed, the pipe still full")
    assert commit_answers(commits, 2) == [Written(1), Written(2)]
    commits.submit(Write(url, "n", 3, {"c": ENTRY}))
    assert commit_answers(commits, 1) == [Written(3)]
    assert commits._thread is thread  # the same thread: nothing ended it
    assert thread is not None
    assert thread.is_alive()
    assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abc"]


def test_a_failed_commit_on_the_thread_is_answered_and_the_next_opens_the_store_afresh(
    commits: CommitThread, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'later' / 'c.db'}"  # its directory does not exist yet
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    [failed] = commit_answers(commits, 1)
    assert failed.seq == 1
    assert "unable to open database file" in (failed.error or "")
    (tmp_path / "later").mkdir()
    commits.submit(Write(url, "n", 2, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(2)]
    assert stored_rows(url, "n") == [("a", ENTRY.payload)]


def test_a_pause_commits_what_was_submitted_and_leaves_no_thread_nor_open_store(
    commits: CommitThread, tmp_path: Path
) -> None:
    """What a fork (the Replicator creating a child) must not copy: another thread (it may hold
    a lock the child would wait on forever) or an open connection to the store."""
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(1)]
    assert commits.running()
    assert str(path) in _open_files()
    commits.submit(Write(url, "n", 2, {"b": ENTRY}))
    commits.pause()
    assert not commits.running()
    assert "thespian_dd commits" not in [t.name for t in threading.enumerate()]
    assert str(path) not in _open_files()
    assert commit_answers(commits, 1) == [Written(2)]  # committed before it ended
    commits.submit(Write(url, "n", 3, {"c": ENTRY}))  # a new thread, the store opened again
    assert commit_answers(commits, 1) == [Written(3)]
    assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abc"]


class _EndsTheThread(dict[str, Entry | None]):
    """Entries whose reading ends the thread that reads them (as only what is not an
    ``Exception`` can)."""

    def items(self) -> Any:
        raise SystemExit


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_commit_thread_that_ends_mid_commit_answers_its_batch_and_a_new_one_takes_over(
    commits: CommitThread, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(1)]
    commits.submit(Write(url, "n", 2, _EndsTheThread()))
    assert commit_answers(commits, 1) == [Written(2, "the commit thread ended mid-commit")]
    eventually(lambda: not commits.running(), what="the ended thread gone")
    commits.submit(Write(url, "n", 3, {"b": ENTRY}))
    assert commit_answers(commits, 1) == [Written(3)]
    assert sorted(stored_rows(url, "n")) == [("a", ENTRY.payload), ("b", ENTRY.payload)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_pause_after_the_thread_ended_mid_commit_leaves_the_next_thread_committing(
    commits: CommitThread, tmp_path: Path
) -> None:
    """The end a pause asks for is the paused thread's own: a thread that ended before reading
    it must not leave it for the next thread, which would end before committing anything."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    commits.submit(Write(url, "n", 1, _EndsTheThread()))
    commits.pause()  # a fork while that batch is being committed: the thread ends before it
    assert commit_answers(commits, 1) == [Written(1, "the commit thread ended mid-commit")]
    commits.submit(Write(url, "n", 2, {"a": ENTRY}))  # the retry: nothing more until answered
    assert commit_answers(commits, 1) == [Written(2)]
    assert stored_rows(url, "n") == [("a", ENTRY.payload)]


def test_commit_here_commits_on_the_caller_s_thread_once_the_thread_opened_the_store(
    commits: CommitThread, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    assert commits.commit_here(Write(url, "n", 1, {"a": ENTRY})) is None  # no store open yet
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) is None  # batch 1 unanswered
    assert commit_answers(commits, 1) == [Written(1)]
    assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) == Written(2)
    assert sorted(stored_rows(url, "n")) == [("a", ENTRY.payload), ("b", ENTRY.payload)]
    commits.submit(Write(url, "n", 3, {"c": ENTRY}))  # the thread again, on the same store
    assert commit_answers(commits, 1) == [Written(3)]
    assert commits.drain() == []  # a commit here is answered by its return only
    assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abc"]


def test_a_failed_commit_here_is_answered_and_the_store_opened_afresh_by_the_thread(
    commits: CommitThread, tmp_path: Path
) -> None:
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(1)]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE thespian_dd_entries")
    failed = commits.commit_here(Write(url, "n", 2, {"b": ENTRY}))
    assert failed is not None
    assert failed.seq == 2
    assert "thespian_dd_entries" in (failed.error or "")
    assert commits.commit_here(Write(url, "n", 3, {"b": ENTRY})) is None  # closed: not here
    commits.submit(Write(url, "n", 3, {"b": ENTRY}))  # the thread opens it (and its tables)
    assert commit_answers(commits, 1) == [Written(3)]
    assert stored_rows(url, "n") == [("b", ENTRY.payload)]


@contextlib.contextmanager
def _write_lock_held(path: Path, seconds: float) -> Iterator[None]:
    """Another program holds SQLite's write lock on ``path`` from now for ``seconds``: a commit
    made meanwhile waits for it (the store's busy timeout).  Asserts that the body lasted as
    long, and returns once the lock is given back."""
    with contextlib.closing(
        sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    ) as other:
        other.execute("BEGIN IMMEDIATE")
        release = threading.Timer(seconds, other.execute, ("COMMIT",))
        started = time.monotonic()
        release.start()
        try:
            yield
            assert time.monotonic() - started >= seconds
        finally:
            release.join()


def test_after_a_slow_commit_batches_go_to_the_thread_until_one_is_quick_again(
    tmp_path: Path,
) -> None:
    """A commit here holds the Replicator: one that took longer than its bound (here another
    program held SQLite's write lock for 0.5 s, against a bound of 0.25 s) sends the next
    batches to the thread, and the thread's next quick commit brings them back here."""
    assert HERE_AT_MOST == 0.01  # the Replicator's bound; a looser one here, for a busy machine
    commits = CommitThread(here_at_most=0.25)
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    try:
        commits.submit(Write(url, "n", 1, {"a": ENTRY}))
        assert commit_answers(commits, 1) == [Written(1)]
        with _write_lock_held(path, 0.5):
            assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) == Written(2)
        assert commits.commit_here(Write(url, "n", 3, {"c": ENTRY})) is None  # slow: the thread
        commits.submit(Write(url, "n", 3, {"c": ENTRY}))
        assert commit_answers(commits, 1) == [Written(3)]
        assert commits.commit_here(Write(url, "n", 4, {"d": ENTRY})) == Written(4)  # quick again
        assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abcd"]
    finally:
        commits.stop()


def test_the_commit_that_opened_the_store_is_not_counted_slow(tmp_path: Path) -> None:
    """The thread's first commit opens the store (creates or checks its tables): however long
    it took, it says nothing of the commits after it, and the next batch is committed here."""
    commits = CommitThread(here_at_most=0.25)
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    try:
        commits.submit(Write(url, "n", 1, {"a": ENTRY}))  # opens the store
        assert commit_answers(commits, 1) == [Written(1)]
        commits.pause()  # closes it: the next thread opens it again
        with _write_lock_held(path, 0.5):
            commits.submit(Write(url, "n", 2, {"b": ENTRY}))  # opens it, waits for the lock
            assert commit_answers(commits, 1) == [Written(2)]
        assert commits.commit_here(Write(url, "n", 3, {"c": ENTRY})) == Written(3)
        assert sorted(stored_rows(url, "n")) == [(k, ENTRY.payload) for k in "abc"]
    finally:
        commits.stop()


def test_an_in_memory_store_is_never_committed_here(commits: CommitThread) -> None:
    """In-memory SQLite gives each thread a database of its own: the thread's must hold all."""
    url = "sqlite://"
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(1)]
    assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) is None


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_server_s_store_is_never_committed_here(commits: CommitThread, kind: str) -> None:
    """A server's commit can stall as long as the network does: the Replicator's thread must
    not wait for it (its Gets and its peers' heartbeats would wait too)."""
    with server_database(kind) as url:
        commits.submit(Write(url, "n", 1, {"a": ENTRY}))
        assert commit_answers(commits, 1) == [Written(1)]
        assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) is None
        commits.submit(Write(url, "n", 2, {"b": ENTRY}))
        assert commit_answers(commits, 1) == [Written(2)]
        commits.pause()  # closes its connection before the database is dropped
        assert sorted(stored_rows(url, "n")) == [("a", ENTRY.payload), ("b", ENTRY.payload)]


def test_a_pause_closes_the_store_a_commit_here_used(commits: CommitThread, tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    url = f"sqlite:///{path}"
    commits.submit(Write(url, "n", 1, {"a": ENTRY}))
    assert commit_answers(commits, 1) == [Written(1)]
    assert commits.commit_here(Write(url, "n", 2, {"b": ENTRY})) == Written(2)
    commits.pause()
    assert not commits.running()
    assert str(path) not in _open_files()
    assert commits.commit_here(Write(url, "n", 3, {"c": ENTRY})) is None  # closed until a thread
