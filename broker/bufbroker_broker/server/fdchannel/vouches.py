"""Proofs that a gRPC call comes from the process holding a session's fd channel.

A session token is a bearer secret, and over a Unix socket gRPC tells the
broker nothing about who sent a call. The fd channel does (SO_PEERCRED at
accept, and only its holder can write to it), so each gRPC call that carries
a token must also name a proof the session sent just before on its fd
channel (``Vouch``). A proof is good once (a call uses it up, so a replayed
call finds none) and for ``lifetime`` seconds; a
session has at most ``MAX_OUTSTANDING`` unused proofs, so a client that
vouches without calling holds a bounded amount of broker memory.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from bufbroker_broker.core.errors import BrokerError, InvalidArgument, ResourceExhausted

MAX_OUTSTANDING = 64
MIN_PROOF_CHARS = 16
MAX_PROOF_CHARS = 128


class Vouches:
    """One session's unused proofs, and the gRPC calls waiting for theirs."""

    def __init__(self, clock: Callable[[], float], lifetime: float = 10.0) -> None:
        self._clock = clock
        self._lifetime = lifetime
        self._unused: OrderedDict[str, float] = OrderedDict()  # proof -> when it expires, oldest first
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self.closed = False

    def add(self, proof: str) -> BrokerError | None:
        """Record ``proof`` from the fd channel; the error to tell the sender, if it is refused."""
        self._expire()
        if not MIN_PROOF_CHARS <= len(proof) <= MAX_PROOF_CHARS:
            return InvalidArgument(
                f"a vouch needs a random proof of {MIN_PROOF_CHARS} to {MAX_PROOF_CHARS} characters, got {len(proof)}"
            )
        if proof in self._unused:
            return InvalidArgument("this proof is already waiting for its call; send a fresh one per call")
        if len(self._unused) >= MAX_OUTSTANDING:
            return ResourceExhausted(
                f"this session has {MAX_OUTSTANDING} proofs no gRPC call used yet: vouch only for calls you make"
            )
        self._unused[proof] = self._clock() + self._lifetime
        waiter = self._waiters.pop(proof, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return None

    async def take(self, proof: str, wait: float) -> bool:
        """Use ``proof`` for one call: True if the session vouched for it (waiting up to ``wait`` s for the vouch).

        The gRPC call may overtake its vouch (two sockets), hence the wait.
        """
        if not proof or len(proof) > MAX_PROOF_CHARS:
            return False
        if proof not in self._unused and not self.closed:
            if len(self._waiters) >= MAX_OUTSTANDING:
                return False
            waiter = self._waiters.setdefault(proof, asyncio.get_running_loop().create_future())
            try:
                await asyncio.wait_for(asyncio.shield(waiter), wait)
            except TimeoutError:
                return False
            finally:
                self._waiters.pop(proof, None)
        self._expire()
        return self._unused.pop(proof, None) is not None

    def close(self) -> None:
        """The session ended: wake every waiting call (each then finds no proof)."""
        self.closed = True
        self._unused.clear()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _expire(self) -> None:
        now = self._clock()
        while self._unused:
            proof, expires = next(iter(self._unused.items()))
            if expires > now:
                return
            del self._unused[proof]
