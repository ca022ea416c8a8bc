"""What a handle (Attachment, Mapping, ExportedBuffer) may ask of its session.

Handles talk to the broker only through this interface, never through the
Session itself, so they sit below the session in the import graph. The
session's transport (``bufbroker.transport.Transport``) implements it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from google.protobuf.message import Message


class BrokerRpc(Protocol):
    """Calls to the broker on behalf of one session; every method raises the SDK's errors."""

    @property
    def closed(self) -> bool:
        """True once the session ended: handles then release what they hold here and tell the broker nothing."""
        ...

    def call(self, method: str, request: Message) -> Any:
        """The response of the gRPC method ``method`` (e.g. "RegisterBuffer")."""
        ...

    def fast_call(self, method: str, request: Message) -> tuple[Any, list[int]]:
        """Attach, Map, Unmap or Detach: the response and the fds of its mapping, if any (the caller owns them)."""
        ...

    def send_fds(self, fds: Sequence[int]) -> str:
        """Send copies of ``fds`` to the broker under a fresh nonce, for a request to name; returns the nonce."""
        ...
