"""Stream processes for the vgem fence test: a producer whose frames carry a real pending dma_fence.

    python -m tests.kernel.vgem_stream_client producer DIR NAME
    python -m tests.kernel.vgem_stream_client consumer DIR NAME [--fence-timeout 5] [--blocked-check 0.5]

Both print one JSON line per event ({"event": ..., "t": CLOCK_MONOTONIC}).
They share only the broker's socket dir (the test reads their stdout).

Producer: creates the stream (memfd slots) and a vgem dumb buffer, prints
"created", then obeys stdin lines:

- ``wait-consumers K`` -> {"event": "consumers", "count"}
- ``publish``: attaches a write fence to the vgem buffer, exports the
  buffer's implicit fence for readers as a sync_file
  (bufbroker.dmabuf.export_sync_file), publishes one frame with
  ``fence=`` that sync_file -> {"event": "published", "seq", "pending"}
  (pending: the sync_file polled not readable just before publish).
- ``signal`` -> DRM_IOCTL_VGEM_FENCE_SIGNAL -> {"event": "signalled", "t"}
  (or {"event": "expired"} if the driver's 10 s timeout signalled it first).
- ``close`` -> {"event": "closed"}.

``implicit-producer`` / ``implicit-consumer``: the same without a fence
of the caller's: the stream's one slot is a vgem dma-buf, so the SDK sends
the buffer's implicit fences (bufbroker.implicit_fences): on publish the
pending write, on release a read the consumer attached to its import of
the buffer, which the producer's acquire() then waits for. Producer
commands as above plus ``acquire T`` -> {"event": "acquire", "got",
"waited"}; the consumer signals its read fence on the stdin line ``signal``.

Consumer: subscribes, receives one frame, prints {"event": "received"},
calls ``frame.wait_fence(FENCE_TIMEOUT)`` in a thread, prints
{"event": "blocked-check", "blocked"} after ``--blocked-check`` seconds and
{"event": "fence", "signalled", "t", "waited"} when wait_fence returns,
then releases the frame and prints {"event": "end"} at end-of-stream.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import threading
import time

import bufbroker
from bufbroker import dmabuf
from tests.kernel.vgem import Vgem


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def wait_consumers(stream: bufbroker.Stream, count: int) -> None:
    """Until ``count`` consumers are linked (their links reach the producer on its event stream), at most 30 s."""
    deadline = time.monotonic() + 30
    while len(stream.consumers()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    emit("consumers", count=len(stream.consumers()))


def producer(args: argparse.Namespace) -> None:
    with Vgem.open() as card, bufbroker.connect(args.socket_dir, name="vgem-producer") as session:
        buffer = card.dumb_buffer(4096)
        stream = session.create_stream(args.name, slots=2, size=4096, offers=["memfd"])
        emit("created", card=card.path, dmabuf_size=buffer.size)
        fence: int | None = None
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "wait-consumers":
                wait_consumers(stream, int(rest[0]))
            elif command == "publish":
                fence = card.attach_fence(buffer.handle, write=True)
                sync_file = dmabuf.export_sync_file(buffer.fd, write=False)
                try:
                    with stream.acquire(5.0) as frame:
                        frame.memoryview()[:8] = (stream.last_seq + 1).to_bytes(8, "little")
                        pending = not readable_now(sync_file)
                        frame.publish(meta=b"vgem", fence=sync_file)
                finally:
                    os.close(sync_file)  # publish sent (or kept) its own duplicates
                emit("published", seq=frame.seq, pending=pending)
            elif command == "signal":
                assert fence is not None, "signal before publish"
                try:
                    card.signal(fence)
                except TimeoutError as error:
                    emit("expired", error=str(error))
                else:
                    emit("signalled")
            elif command == "close":
                stream.close()
                emit("closed")
                return


def consumer(args: argparse.Namespace) -> None:
    with bufbroker.connect(args.socket_dir, name="vgem-consumer") as session:
        sub = session.subscribe(args.name, accept=["memfd"], wait=60.0)
        emit("subscribed", link_id=sub.link_id)
        frame = sub.receive(120)
        emit("received", seq=frame.seq, fences=len(frame.fences), meta=frame.meta.decode())
        result: dict[str, object] = {}

        def wait() -> None:
            started = time.monotonic()
            result["signalled"] = frame.wait_fence(timeout=args.fence_timeout)
            result["t"] = time.monotonic()
            result["waited"] = result["t"] - started  # type: ignore[operator]

        waiter = threading.Thread(target=wait, name="wait-fence")
        started = time.monotonic()
        waiter.start()
        time.sleep(args.blocked_check)
        emit("blocked-check", blocked=waiter.is_alive(), after=time.monotonic() - started)
        waiter.join()
        emit("fence", **result)
        seq = int.from_bytes(frame.memoryview()[:8], "little")
        frame.release()
        try:
            sub.receive(120)
        except bufbroker.EndOfStream as error:
            emit("end", reason=str(error), first_bytes_seq=seq)
        sub.close()


def implicit_producer(args: argparse.Namespace) -> None:
    """One slot backed by a vgem dma-buf; publish() and acquire() with no fence of the caller's."""
    with Vgem.open() as card, bufbroker.connect(args.socket_dir, name="vgem-implicit-producer") as session:
        buffer = card.dumb_buffer(4096)
        stream = session.create_stream(
            args.name, slots=1, max_held=1, fds=[buffer.fd], offers=[bufbroker.Dmabuf(access="read_write")]
        )
        emit("created", card=card.path)
        fence = 0
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "wait-consumers":
                wait_consumers(stream, int(rest[0]))
            elif command == "publish":
                with stream.acquire(5.0) as frame:
                    frame.memoryview()[:8] = (stream.last_seq + 1).to_bytes(8, "little")
                    fence = card.attach_fence(buffer.handle, write=True)  # a "GPU" write still in flight
                    frame.publish(meta=b"vgem")  # no fence=: the SDK sends the buffer's implicit one
                emit("published", seq=frame.seq)
            elif command == "signal":
                card.signal(fence)
                emit("signalled")
            elif command == "acquire":
                started = time.monotonic()
                try:
                    frame = stream.acquire(float(rest[0]))
                except TimeoutError as error:
                    emit("acquire", got=False, waited=time.monotonic() - started, error=str(error))
                else:
                    frame.abandon()
                    emit("acquire", got=True, waited=time.monotonic() - started)
            elif command == "close":
                stream.close()
                emit("closed")
                return


def implicit_consumer(args: argparse.Namespace) -> None:
    """Receives a dma-buf frame, waits on its implicit fence, releases it with a "GPU" read still pending."""
    with Vgem.open() as card, bufbroker.connect(args.socket_dir, name="vgem-implicit-consumer") as session:
        sub = session.subscribe(args.name, accept=["dmabuf"], wait=60.0)
        emit("subscribed", link_id=sub.link_id)
        frame = sub.receive(120)
        emit("received", seq=frame.seq, fences=len(frame.fences), dmabuf=dmabuf.is_dmabuf(frame.mapping.fds[0]))
        started = time.monotonic()
        emit("blocked-check", blocked=not frame.wait_fence(timeout=args.blocked_check))
        emit("fence", signalled=frame.wait_fence(timeout=args.fence_timeout), waited=time.monotonic() - started)
        seq = int.from_bytes(frame.memoryview()[:8], "little")
        read_fence = card.attach_fence(card.import_dmabuf(frame.mapping.fds[0]), write=False)
        frame.release()  # no fence=: the SDK sends the buffer's pending reads (this one) as the release fence
        emit("released", first_bytes_seq=seq)
        for line in sys.stdin:
            if line.split() == ["signal"]:
                card.signal(read_fence)
                emit("signalled")
                break
        try:
            sub.receive(120)
        except bufbroker.EndOfStream as error:
            emit("end", reason=str(error))
        sub.close()


ROLES = {
    "producer": producer,
    "consumer": consumer,
    "implicit-producer": implicit_producer,
    "implicit-consumer": implicit_consumer,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("socket_dir")
    parser.add_argument("name")
    parser.add_argument("--fence-timeout", type=float, default=5.0)
    parser.add_argument("--blocked-check", type=float, default=0.5)
    args = parser.parse_args()
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
