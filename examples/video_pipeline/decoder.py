"""Decoder process: decode the source into a pool of bufbroker buffers.

Exports POOL buffers laid out as I420 with per-plane offsets and strides,
decodes each frame into a free slot and hands the slot number to the
analyser. When the stream changes resolution it moves each slot to a new
backing with the new layout as the slot comes free, so no consumer ever
reads a buffer while it moves and the pipeline does not drain.
"""

from __future__ import annotations

import mmap
import time
from pathlib import Path
from typing import Any

POOL = 4
FOURCC = "I420"
ALIGN = 64  # luma rows start on 64-byte boundaries, as decoders like
WANTED_OFFERS = ["udmabuf", "segments", "memfd"]
RELEASE_TIMEOUT = 30.0


def slot_layout(width: int, height: int) -> tuple[dict, int]:
    """A slot's layout for a frame size, and the buffer size: whole pages, as udmabuf needs."""
    from bufbroker.planes import packed_layout

    layout, nbytes = packed_layout(FOURCC, width, height, align=ALIGN)
    return layout, -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE


def choose_offers(session: Any) -> tuple[list[str], str]:
    """The wanted offers this broker and SDK both know, and a note on udmabuf.

    A broker refuses an offer naming a type it does not register
    (INVALID_ARGUMENT), so ask it first rather than fail.
    """
    from bufbroker import specs
    from bufbroker.v1 import broker_pb2

    known = {t.name: t for t in session.call("ListMappingTypes", broker_pb2.ListMappingTypesRequest()).mapping_types}
    udmabuf = known.get("udmabuf")
    if udmabuf is None:
        return [o for o in WANTED_OFFERS if o != "udmabuf"], (
            f"not offered: this broker registers no udmabuf type (it knows {', '.join(sorted(known))})"
        )
    try:
        specs.offers_to_wire(["udmabuf"])
    except ValueError:
        # A newer broker than this SDK: the SDK has no spec to send for it.
        return [
            o for o in WANTED_OFFERS if o != "udmabuf"
        ], "not offered: the broker knows udmabuf but this SDK cannot name it"
    where = "usable here" if udmabuf.supported else f"not usable here: {udmabuf.support_reason or 'no reason given'}"
    return list(WANTED_OFFERS), f"offered first (the broker registers it; {where})"


def copy_into(planes: list, frame: Any) -> int:
    """Copy a decoded yuv420p frame into the slot's plane views; return the pixel bytes."""
    from examples.video_pipeline.h264 import plane_rows

    copied = 0
    for target, plane in zip(planes, frame.planes):
        rows, row_bytes = target.shape
        target[:, :] = plane_rows(plane)[:rows, :row_bytes]
        copied += rows * row_bytes
    return copied


def decoder_main(socket_dir: str, run_id: str, source: str, control: Any, to_analyser: Any, releases: dict) -> None:
    """``control``: the runner's pipe (ready/start/result); ``releases``: consumer name -> pipe."""
    import bufbroker
    from bufbroker.planes import plane_arrays
    from examples.video_pipeline.h264 import open_stream
    from examples.video_pipeline.handoff import END, FRAME, Channel
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.pool import SlotPool

    frames_out = Channel(to_analyser)
    pool = SlotPool(POOL, {name: Channel(conn) for name, conn in releases.items()})
    with bufbroker.connect(socket_dir) as session:
        meter = ControlPlaneMeter(session)
        offers, udmabuf_note = choose_offers(session)
        container, stream = open_stream(Path(source))
        with container:
            size = (stream.codec_context.width, stream.codec_context.height)
            layout, nbytes = slot_layout(*size)
            buffers = [
                session.export(
                    nbytes, name=f"{run_id}-slot-{i}", offers=offers, layout=layout, labels={"example": "video"}
                )
                for i in range(POOL)
            ]
            meter.fds += POOL
            sizes = [size] * POOL
            planes: list = [plane_arrays(b.memoryview(), layout) for b in buffers]
            control.send(
                {"names": [b.name for b in buffers], "offers": offers, "udmabuf": udmabuf_note, "layout": layout}
            )
            control.recv()  # start: both consumers have attached
            started = time.monotonic()
            moves, pixel_bytes, seq = [], 0, 0
            for seq, frame in enumerate(container.decode(stream)):
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                slot = pool.take(RELEASE_TIMEOUT)
                if sizes[slot] != (frame.width, frame.height):
                    # The slot is free: nobody reads it, so it may move now.
                    planes[slot] = None  # the views pin the old mapping
                    layout, nbytes = slot_layout(frame.width, frame.height)
                    moved_at = time.monotonic()
                    non_compliant = buffers[slot].move(
                        nbytes, layout=layout, reason=f"resolution change to {frame.width}x{frame.height}"
                    )
                    moves.append(
                        {
                            "slot": slot,
                            "frame": seq,
                            "ms": (time.monotonic() - moved_at) * 1000,
                            "non_compliant": non_compliant,
                            "size": (frame.width, frame.height),
                            "generation": buffers[slot].info.generation,
                        }
                    )
                    meter.fds += 1
                    sizes[slot] = (frame.width, frame.height)
                    planes[slot] = plane_arrays(buffers[slot].memoryview(), layout)
                pixel_bytes += copy_into(planes[slot], frame)
                pool.hand_out(slot, seq)
                frames_out.send(FRAME, slot, buffers[slot].info.generation, seq)
            frames_out.send(FRAME, END, 0, 0)
            frames = seq + 1
            # Keep the pool registered until both consumers have detached.
            pool.wait_detached(RELEASE_TIMEOUT)
        planes.clear()
        for buffer in buffers:
            buffer.unregister()  # session close alone would leave this process's memfds open
        control.send(
            {
                "frames": frames,
                "started": started,
                "pixel_bytes": pixel_bytes,
                "moves": moves,
                "handoff_bytes": frames_out.bytes_sent,
                "handoff_messages": frames_out.messages_sent,
                "meter": meter.summary(),
            }
        )
