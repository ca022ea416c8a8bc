"""Streams: frames flowing through a pool of slot buffers, producer to consumers, directly.

A producer's ``Stream`` (``Session.create_stream``) owns N slot buffers and
a ``SlotPool``; each consumer's ``Subscription`` (``Session.subscribe``) is
attached and mapped to every slot by the broker, which then hands each side
one end of a SOCK_SEQPACKET *link* (``bufbroker.streamlink``). From then on
every frame is one datagram producer -> consumer and every release one
datagram back; the broker sees none of them.

The pairs follow what the caller holds:

- producer: ``stream.acquire()`` loans a ``ProducerFrame`` (a free slot), the
  producer writes it and ``frame.publish()`` sends it; leaving its
  ``with`` block unpublished ``abandon()``s it.
- consumer: ``sub.receive()`` gives a ``ConsumerFrame`` the consumer holds
  until ``frame.release()`` (also on leaving its ``with`` block).

Threads. The producer's *pump* thread reads every link (releases, byes,
EOF of a dead consumer: its slots return at once), applies the stall
policy every ``STALL_CHECK`` seconds and reports counters to the broker at
most twice a second; the session's events thread adds the links the
broker opens. While a thread waits in ``acquire`` for a slot, that thread
reads the links instead of the pump (the release it waits for wakes it
directly, with no second thread to wake), and the pump takes over again
within ``HANDOVER_CHECK`` seconds once nobody waits. ``acquire`` and
``publish`` may be called from any thread (one lock guards the pool). A
``Subscription`` and its frames are used from one thread (or one asyncio
loop): it has no thread of its own, and its counters go to the broker from
``receive`` at most twice a second.

Moves (``Stream.move``: a resolution change). The producer stops handing
out slots, drains (waits until every frame published was released, so no
consumer reads a slot while it moves), moves each slot buffer through the
buffers' own move path (the broker's MoveNotify makes every consumer's SDK
unmap and map again) and only then hands out slots again: every frame
after carries the new generation (``Frame.generation``, per slot the
number of times that slot buffer moved, plus one). A consumer keeps, per
slot, the generation its mapping shows; a frame of a newer one waits
(bounded) for that slot's new mapping before ``receive`` returns it, so no
frame is ever read through a mapping of another generation. Releases of
an older generation reach the producer only for frames it took back, and
it ignores them. With no move, the per-frame cost is one integer compare
on each side.

Modules: ``stream_producer`` (Stream, ProducerFrame, StreamRegistry),
``stream_consumer`` (Subscription, ConsumerFrame), ``stream_common``
(settings, wire values, fence waits, reports); the link itself is
``streamlink``, the slot bookkeeping ``slotpool``, the implicit dma-buf
fences ``implicit_fences``. This module is their public face.
"""

from bufbroker.stream_common import (
    DEFAULT_STALL_TIMEOUT,
    FIRST_GENERATION,
    MODES,
    MOVE_DRAIN_TIMEOUT,
    REMAP_TIMEOUT,
    REPORT_PERIOD,
    STALL_POLICIES,
    latency_histogram,
    layout_pair,
    mode_value,
    report_stats,
    stall_value,
)
from bufbroker.stream_consumer import ConsumerFrame, Subscription
from bufbroker.stream_producer import ProducerFrame, Stream, StreamRegistry

__all__ = [
    "DEFAULT_STALL_TIMEOUT",
    "FIRST_GENERATION",
    "MODES",
    "MOVE_DRAIN_TIMEOUT",
    "REMAP_TIMEOUT",
    "REPORT_PERIOD",
    "STALL_POLICIES",
    "ConsumerFrame",
    "ProducerFrame",
    "Stream",
    "StreamRegistry",
    "Subscription",
    "latency_histogram",
    "layout_pair",
    "mode_value",
    "report_stats",
    "stall_value",
]
