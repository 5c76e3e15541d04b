"""Opening a store's database (:mod:`thespian_dd._runtime.database`): the signing key file, URLs
in messages without their password, and a server that never answers failing in bounded time."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from thespian_dd._runtime.database import StoreError, read_signing_key, safe_url
from thespian_dd._runtime.store import Store

pytestmark = pytest.mark.timeout(180)


def test_a_signing_key_file_is_read_whole_and_a_bad_one_named(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(b"a secret\n")
    assert read_signing_key(str(key_file)) == b"a secret\n"  # every byte, the newline too
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match=r"the signing key file .*empty\.key is empty"):
        read_signing_key(str(empty))
    with pytest.raises(StoreError, match=r"cannot read the signing key file .*nowhere\.key: "):
        read_signing_key(str(tmp_path / "nowhere.key"))
    bad_keys: list[Any] = [b"", "a secret as text"]
    for bad in bad_keys:
        with pytest.raises(StoreError, match="the signing key must be non-empty bytes"):
            Store(f"sqlite:///{tmp_path}/k.db", signing_key=bad)


def test_urls_in_messages_never_show_a_password() -> None:
    url = "postgresql+psycopg://dd:hunter2@db.invalid/dd"
    assert safe_url(url) == "postgresql+psycopg://dd:***@db.invalid/dd"
    assert safe_url("sqlite:///n1.db") == "sqlite:///n1.db"
    assert safe_url("hunter2, not a URL") == "<not an SQLAlchemy URL>"
    # Port 1 of loopback refuses at once: the error names the store, password hidden.
    with pytest.raises(StoreError, match="cannot open the store") as refused:
        Store("postgresql+psycopg://dd:hunter2@127.0.0.1:1/dd")
    assert "dd:***@127.0.0.1:1/dd" in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.fixture
def silent_server() -> Any:
    """A port that accepts connections (the kernel completes them) but never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_server_store_that_never_answers_fails_within_the_connect_timeout(
    silent_server: int,
) -> None:
    with pytest.raises(StoreError, match="timeout"):
        Store(f"postgresql+psycopg://u:secret@127.0.0.1:{silent_server}/db")


@pytest.mark.timeout(30)
def test_a_timeout_in_the_url_is_the_one_used(silent_server: int) -> None:
    # MariaDB's driver would wait 30 s for the greeting (IO_TIMEOUT); the URL asks for 1 s.
    url = f"mysql+pymysql://u:secret@127.0.0.1:{silent_server}/db?read_timeout=1"
    with pytest.raises(StoreError, match="Lost connection"):
        Store(url)
