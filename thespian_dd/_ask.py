"""Asking the Replicator from outside the actor system, and getting one's own reply.

Thespian's ``ask`` returns the first message that reaches the caller's endpoint: the reply to an
earlier ``tell``, a late reply to a request that timed out, a subscriber's ``Changed``.  So every
request is tagged, and the caller reads on until the reply that carries the tag.  This is the one
place that does it: :class:`thespian_dd.Client`, :func:`thespian_dd.start` and the test kit's
``Node.ask`` / ``Cluster.ask`` all go through :func:`ask_until`.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any

from thespian.actors import PoisonMessage

from thespian_dd.messages import Update

__all__ = ["ask", "ask_until", "new_token", "reply_to"]


def new_token() -> str:
    """A request tag no other request of any process uses."""
    return f"thespian_dd:{secrets.token_hex(8)}"


def reply_to(token: Any) -> Callable[[Any], bool]:
    """Whether a message is the reply to the request tagged ``token``: it echoes the tag, or it is
    Thespian's ``PoisonMessage`` returning that request (the Replicator failed on it twice)."""

    def matches(message: Any) -> bool:
        if isinstance(message, PoisonMessage):
            message = message.poisonMessage
        return bool(getattr(message, "request", None) == token)

    return matches


def ask_until(  # noqa: PLR0913, PLR0917 - the ask's own four, the match, the rest
    endpoint: Any,
    address: Any,
    message: Any,
    is_reply: Callable[[Any], bool],
    timeout: float,
    on_other: Callable[[Any], None] | None = None,
) -> Any | None:
    """Send ``message`` to ``address`` from ``endpoint`` (an ActorSystem or one of its
    ``private()`` contexts) and return the first message that ``is_reply``; None if none
    arrives within ``timeout`` seconds.  Every other message received meanwhile goes to
    ``on_other`` (dropped without one)."""
    deadline = time.monotonic() + timeout
    received = endpoint.ask(address, message, timeout)
    while received is None or not is_reply(received):
        if received is not None and on_other is not None:
            on_other(received)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        received = endpoint.listen(remaining)
    return received


def _with_request(message: Any, token: Any) -> Any:
    """``message`` with ``request=token``, if it is a request that echoes one; else itself."""
    if isinstance(message, Update):
        return message.with_request(token)
    if dataclasses.is_dataclass(message) and any(
        f.name == "request" for f in dataclasses.fields(message)
    ):
        return dataclasses.replace(message, request=token)  # type: ignore[type-var]
    return message


def ask(endpoint: Any, address: Any, message: Any, timeout: float) -> Any | None:
    """Send ``message`` and return its own reply, with the message's own ``request`` value
    (None on timeout).  A message without a ``request`` field cannot be matched: its reply is
    the first message that arrives, as with Thespian's ``ask``."""
    token = new_token()
    tagged = _with_request(message, token)
    if tagged is message:
        return endpoint.ask(address, message, timeout)
    reply = ask_until(endpoint, address, tagged, reply_to(token), timeout)
    if dataclasses.is_dataclass(reply) and not isinstance(reply, type):
        reply = dataclasses.replace(reply, request=message.request)
    return reply
