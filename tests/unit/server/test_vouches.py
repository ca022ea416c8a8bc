"""Vouches: a proof is good once, for a while, from its own session; a bounded number wait."""

from __future__ import annotations

import asyncio

from bufbroker_broker.server.fdchannel.vouches import MAX_OUTSTANDING, Vouches

PROOF = "p" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_vouched_proof_is_taken_once():
    vouches = Vouches(Clock())
    assert vouches.add(PROOF) is None
    assert run(vouches.take(PROOF, 0.01)) is True
    assert run(vouches.take(PROOF, 0.01)) is False  # a replayed call finds none


def test_a_call_may_arrive_before_its_vouch():
    async def scenario() -> bool:
        vouches = Vouches(Clock())
        taking = asyncio.ensure_future(vouches.take(PROOF, 1.0))
        await asyncio.sleep(0)
        assert vouches.add(PROOF) is None
        return await taking

    assert run(scenario()) is True


def test_an_unvouched_or_empty_proof_is_refused_after_the_wait():
    vouches = Vouches(Clock())
    assert run(vouches.take("q" * 32, 0.01)) is False
    assert run(vouches.take("", 10.0)) is False  # no wait at all


def test_a_proof_expires():
    clock = Clock()
    vouches = Vouches(clock, lifetime=10.0)
    vouches.add(PROOF)
    clock.now += 10.5
    assert run(vouches.take(PROOF, 0.01)) is False


def test_proofs_of_the_wrong_length_are_refused_with_the_rule():
    vouches = Vouches(Clock())
    for proof in ("short", "x" * 129):
        error = vouches.add(proof)
        assert error is not None and "16 to 128 characters" in error.message


def test_unused_proofs_are_bounded():
    vouches = Vouches(Clock())
    for n in range(MAX_OUTSTANDING):
        assert vouches.add(f"{n:032d}") is None
    error = vouches.add("z" * 32)
    assert (
        error is not None and error.status == "RESOURCE_EXHAUSTED" and "vouch only for calls you make" in error.message
    )


def test_close_wakes_waiting_calls_refused():
    async def scenario() -> bool:
        vouches = Vouches(Clock())
        taking = asyncio.ensure_future(vouches.take(PROOF, 30.0))
        await asyncio.sleep(0)
        vouches.close()
        return await asyncio.wait_for(taking, 1.0)

    assert run(scenario()) is False
