"""The hand-off producer: one process holding the same frame three ways.

Commands on stdin, one JSON answer line each on stdout:
  setup SIZE   (repeatable: the segments accumulate) fill a bufbroker buffer, a shared_memory segment and a bytes
               frame of SIZE bytes; answer names, the gRPC address and the
               producer's warm sequential read time on the bufbroker pages
  read         one warm timed read of the newest buffer's pages (the bandwidth baseline)
  teardown     drop them all
EOF ends the process.
"""

from __future__ import annotations

import sys
from concurrent import futures
from multiprocessing import shared_memory

import grpc

import bufbroker
from bench.common import UNLIMITED, emit, fill, now, read_all


def drop(shms: list) -> None:
    for shm in shms:
        shm.close()
        shm.unlink()
    shms.clear()


def main(socket_dir: str, frame_socket: str) -> None:
    state: dict = {"frame": b""}

    def get_frame(request: bytes, context: grpc.ServicerContext) -> bytes:
        return state["frame"]

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=UNLIMITED)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Frames", {"Get": grpc.unary_unary_rpc_method_handler(get_frame)}),)
    )
    server.add_insecure_port(f"unix:{frame_socket}")
    server.start()
    session = bufbroker.connect(socket_dir)
    exported: list = []
    shms: list = []
    serial = 0
    try:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "setup":
                size = int(words[1])
                serial += 1
                name = f"bench-handoff-{serial}"
                buffer = session.export(size, name=name, offers=["memfd"])
                exported.append(buffer)
                view = buffer.memoryview()
                fill(view, serial)
                read_all(view)  # warm
                reads = []
                for _ in range(3):
                    t0 = now()
                    read_all(view)
                    reads.append(now() - t0)
                del view
                shm = shared_memory.SharedMemory(create=True, size=size)
                shms.append(shm)
                fill(shm.buf, serial)
                state["frame"] = bytes(shm.buf)  # the gRPC path's frame, made once
                emit({"name": name, "shm": shm.name, "producer_read_s": min(reads), "size": size})
            elif words[0] == "read":
                # one warm sequential read of the newest bufbroker buffer, timed here
                view = exported[-1].memoryview()
                t0 = now()
                read_all(view)
                elapsed = now() - t0
                del view
                emit({"read_s": elapsed})
            elif words[0] == "teardown":
                state["frame"] = b""
                for buffer in exported:
                    buffer.unregister()
                exported.clear()
                drop(shms)
                emit({"ok": True})
    finally:
        drop(shms)
        session.close()
        server.stop(0.5).wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
