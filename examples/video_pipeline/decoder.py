"""Decoder stage: decode the source into the stream ``decoded``.

    python -m examples.video_pipeline.decoder SOCKET_DIR SOURCE [--stream decoded]
        [--consumers video-analyser,video-encoder] [--result FILE]

Creates a stream of POOL slot buffers laid out as I420 with per-plane
offsets and strides, waits until the ``--consumers`` (session names)
subscribed (a frame goes only to the consumers subscribed when it is
published; others, e.g. ``bufbroker stream watch``, may join too), then
decodes each frame straight into a slot it acquired and publishes it. A
slot comes back only when every consumer released it. When the video
changes resolution the decoder moves the stream to the new layout
(``stream.move``): the slots get new backings with the new layout, and the
frames published after it carry the new generation. At the end it drains
the stream (every frame released) and closes it: the consumers get
end-of-stream.
"""

from __future__ import annotations

import argparse
import mmap
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POOL = 4
FOURCC = "I420"
ALIGN = 64  # luma rows start on 64-byte boundaries, as decoders like
WANTED_OFFERS = ["udmabuf", "segments", "memfd"]


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


def decode(socket_dir: str, source: str, name: str, consumers: Sequence[str]) -> dict[str, Any]:
    import bufbroker
    from bufbroker.planes import plane_arrays
    from examples.video_pipeline.h264 import open_stream
    from examples.video_pipeline.handoff import DECODED_META, DECODER, STEP_TIMEOUT, wait_for_consumers
    from examples.video_pipeline.meter import ControlPlaneMeter

    with bufbroker.connect(socket_dir, name=DECODER) as session:
        meter = ControlPlaneMeter(session)
        offers, udmabuf_note = choose_offers(session)
        container, video = open_stream(Path(source))
        with container:
            size = (video.codec_context.width, video.codec_context.height)
            layout, nbytes = slot_layout(*size)
            # on_stall="report": a consumer slower than the stall timeout (a loaded machine) is
            # reported, not robbed of its slot: this pipeline must carry every frame.
            stream = session.create_stream(
                name,
                slots=POOL,
                size=nbytes,
                layout=layout,
                offers=offers,
                labels={"example": "video"},
                on_stall="report",
            )
            meter.fds += POOL
            ready = {
                "stream": name,
                "slots": POOL,
                "offers": offers,
                "udmabuf": udmabuf_note,
                "layout": layout,
            }
            wait_for_consumers(session, stream, consumers)
            meter.fds += len(stream.consumers())  # the producer's end of each link
            started = time.monotonic()
            moves, pixel_bytes, index = [], 0, -1
            for index, frame in enumerate(container.decode(video)):
                if frame.format.name != "yuv420p":
                    frame = frame.reformat(format="yuv420p")
                if size != (frame.width, frame.height):
                    size = (frame.width, frame.height)
                    layout, nbytes = slot_layout(*size)
                    moved_at = time.monotonic()
                    generation = stream.move(
                        size=nbytes,
                        layout=layout,
                        timeout=STEP_TIMEOUT,
                        reason=f"resolution change to {size[0]}x{size[1]} at frame {index}",
                    )
                    moves.append(
                        {
                            "frame": index,
                            "ms": (time.monotonic() - moved_at) * 1000,
                            "size": size,
                            "generation": generation,
                        }
                    )
                    meter.fds += POOL
                with stream.acquire(timeout=STEP_TIMEOUT) as slot:
                    planes = plane_arrays(slot.memoryview(), layout)
                    pixel_bytes += copy_into(planes, frame)
                    del planes  # nothing of ours may point into the slot once it is published
                    slot.publish(meta=DECODED_META.pack(index))
            frames = index + 1
            drained = stream.drain(STEP_TIMEOUT)
            published = stream.published
            stream.close()
    return {
        "ready": ready,
        "frames": frames,
        "published": published,
        "drained": drained,
        "started": started,
        "pixel_bytes": pixel_bytes,
        "moves": moves,
        "meter": meter.summary(),
        "cpu_seconds": time.process_time(),  # every thread of this process, start-up included
    }


def main(argv: list[str] | None = None) -> int:
    from examples.video_pipeline.handoff import ANALYSER, DECODED, ENCODER, fail, write_result

    parser = argparse.ArgumentParser(
        prog="python -m examples.video_pipeline.decoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("socket_dir")
    parser.add_argument("source", help="raw H.264 file")
    parser.add_argument("--stream", default=DECODED, help=f"the stream to produce (default {DECODED})")
    parser.add_argument(
        "--consumers",
        default=f"{ANALYSER},{ENCODER}",
        metavar="NAMES",
        help=f"publish once the sessions of these names subscribed (default {ANALYSER},{ENCODER})",
    )
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result JSON here (default stdout)")
    args = parser.parse_args(argv)
    try:
        result = decode(args.socket_dir, args.source, args.stream, [n for n in args.consumers.split(",") if n])
    except Exception as error:
        return fail("decoder", error)
    write_result(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
