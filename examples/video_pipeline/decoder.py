"""Decoder stage: decode the source into the stream ``decoded``, in the format PyAV decodes to.

    python -m examples.video_pipeline.decoder SOCKET_DIR SOURCE [--stream decoded]
        [--consumers video-analyser,video-encoder] [--convert-to NV12] [--result FILE]

Decodes the first frame to learn its pixel format (PyAV's ``yuv420p`` for
this source, DRM ``YUV420``), then creates a stream of POOL slot buffers
with the layout bufbroker.formats derives for that format and size: every
slot offer carries the pair ``YUV420:LINEAR``, and the stream says the
decoder could also produce the ``--convert-to`` formats (it converts with
PyAV's ``reformat``), so a consumer that accepts only one of those makes
the stream renegotiate (move its slots to it) instead of being refused.
It waits until the ``--consumers`` (session names) subscribed (a frame
goes only to the consumers subscribed when it is published; others, e.g.
``bufbroker stream watch``, may join too), then decodes each frame
straight into a slot it acquired, in the format the slot is in now, and
publishes it. A slot comes back only when every consumer released it.
When the video changes resolution the decoder moves the stream to the new
layout (``stream.move``) of the same format: the slots get new backings,
and the frames published after it carry the new generation. At the end it
drains the stream (every frame released) and closes it: the consumers get
end-of-stream.
"""

from __future__ import annotations

import argparse
import itertools
import mmap
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POOL = 4
ALIGN = 64  # luma rows start on 64-byte boundaries, as decoders like
WANTED_OFFERS = ["udmabuf", "segments", "memfd"]
# Formats the decoder can write besides the one it decodes to (PyAV's reformat converts): 8-bit 4:2:0,
# which the analyser and the encoder both read. A stream may renegotiate to one of them.
CONVERT_TO = ("NV12",)


def slot_layout(fourcc: str, width: int, height: int) -> tuple[dict, int]:
    """A slot's layout for a format and frame size, and the buffer size: whole pages, as udmabuf needs.

    The layout is derived, not typed: rows aligned to ALIGN, and the chroma
    planes' strides taken from the luma stride (``chroma_from_luma``), so
    the planes form the one array PyAV wraps without a copy (the encoder
    hands the slot to libx264 as it is; ``bufbroker.av_frames.copy_reason``
    says when it cannot).
    """
    from bufbroker.formats import derive_layout

    layout = derive_layout(fourcc, width, height, align=ALIGN, chroma_from_luma=True)
    return layout.to_dict(), -(-layout.size // mmap.PAGESIZE) * mmap.PAGESIZE


def producible(native: str, convert_to: Sequence[str]) -> list[str]:
    """The pairs this decoder can produce, in its order: what PyAV decodes to first, then conversions."""
    from bufbroker.formats import pair_text, parse_format

    pairs = [pair_text(native, 0)]
    for name in convert_to:
        fmt = parse_format(name)
        if fmt.av is None or any(plane.dtype != "uint8" for plane in fmt.planes):
            raise ValueError(f"the decoder cannot convert to {fmt.name}: it writes 8-bit formats PyAV has")
        if pair_text(fmt, 0) not in pairs:
            pairs.append(pair_text(fmt, 0))
    return pairs


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


def current_format(stream: Any) -> str:
    """The format the stream's slots are in now: a renegotiation may have moved them to another."""
    layout = stream.layout
    if layout is None:
        raise RuntimeError(f"stream {stream.name!r} has no layout: it was created without one")
    return str(layout["fourcc"])


def copy_into(planes: list, frame: Any, fourcc: str) -> int:
    """Copy a decoded frame into the slot's plane views (``slot.planes()``) as ``fourcc``; return the pixel bytes.

    The frame is converted first when the slot is in another format than
    PyAV decoded to (after a renegotiation). Each view has its format's
    shape (NV12's UV plane is (h/2, w/2, 2)): the source rows are shaped
    to it, never the other way, so a view is always written in place.
    """
    from bufbroker.formats import parse_format
    from examples.video_pipeline.h264 import plane_rows

    pix_fmt = parse_format(fourcc).av
    if frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt)
    copied = 0
    for target, plane in zip(planes, frame.planes, strict=True):
        rows, row_bytes = target.shape[0], target[0].nbytes
        target[...] = plane_rows(plane)[:rows, :row_bytes].reshape(target.shape)
        copied += rows * row_bytes
    return copied


def decode(
    socket_dir: str, source: str, name: str, consumers: Sequence[str], convert_to: Sequence[str]
) -> dict[str, Any]:
    import bufbroker
    from bufbroker.formats import from_av
    from examples.video_pipeline.h264 import open_stream
    from examples.video_pipeline.handoff import DECODED_META, DECODER, STEP_TIMEOUT, wait_for_consumers
    from examples.video_pipeline.meter import ControlPlaneMeter

    with bufbroker.connect(socket_dir, name=DECODER) as session:
        meter = ControlPlaneMeter(session)
        offers, udmabuf_note = choose_offers(session)
        container, video = open_stream(Path(source))
        with container:
            decoded = container.decode(video)
            first = next(decoded, None)
            if first is None:
                raise ValueError(f"{source}: no video frame to decode")
            # The format is what PyAV decodes to, looked up in the format table (yuv420p -> YUV420).
            native = from_av(first.format.name).name
            produce = producible(native, convert_to)
            size = (first.width, first.height)
            layout, nbytes = slot_layout(native, *size)
            # on_stall="report": a consumer slower than the stall timeout (a loaded machine) is
            # reported, not robbed of its slot: this pipeline must carry every frame.
            stream = session.create_stream(
                name,
                slots=POOL,
                size=nbytes,
                layout=layout,
                offers=offers,
                formats=produce,
                renegotiate=len(produce) > 1,
                align=ALIGN,
                labels={"example": "video"},
                on_stall="report",
            )
            meter.fds += POOL
            ready = {
                "stream": name,
                "slots": POOL,
                "offers": offers,
                "udmabuf": udmabuf_note,
                "decodes_to": first.format.name,
                "format": f"{native}:LINEAR",
                "can_produce": produce,
                "layout": layout,
            }
            print(
                f"video decoder: PyAV decodes to {first.format.name}: stream {name!r} offers {native}:LINEAR "
                f"(can produce {', '.join(produce)})",
                file=sys.stderr,
                flush=True,
            )
            wait_for_consumers(session, stream, consumers)
            meter.fds += len(stream.consumers())  # the producer's end of each link
            # The consumers' accept lists may have moved the slots to another format (renegotiation).
            negotiated = current_format(stream)
            started = time.monotonic()
            moves, pixel_bytes, index = [], 0, -1
            for index, frame in enumerate(itertools.chain([first], decoded)):
                if size != (frame.width, frame.height):
                    size = (frame.width, frame.height)
                    current = current_format(stream)
                    layout, nbytes = slot_layout(current, *size)
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
                            "format": current,
                        }
                    )
                    meter.fds += POOL
                with stream.acquire(timeout=STEP_TIMEOUT) as slot:
                    planes = slot.planes()  # in the slots' format now, which may not be what PyAV decoded to
                    pixel_bytes += copy_into(planes, frame, current_format(stream))
                    del planes  # nothing of ours may point into the slot once it is published
                    slot.publish(meta=DECODED_META.pack(index))
            frames = index + 1
            drained = stream.drain(STEP_TIMEOUT)
            published = stream.published
            generation = stream.generation
            stream.close()
    return {
        "ready": ready,
        "negotiated": negotiated,
        "frames": frames,
        "published": published,
        "generation": generation,
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
    parser.add_argument(
        "--convert-to",
        default=",".join(CONVERT_TO),
        metavar="FORMATS",
        help="formats the decoder offers to convert to when a consumer needs one (renegotiation; "
        f"default {','.join(CONVERT_TO)}; empty: only the format PyAV decodes to)",
    )
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result JSON here (default stdout)")
    args = parser.parse_args(argv)
    try:
        result = decode(
            args.socket_dir,
            args.source,
            args.stream,
            [n for n in args.consumers.split(",") if n],
            [f for f in args.convert_to.split(",") if f.strip()],
        )
    except Exception as error:
        return fail("decoder", error)
    write_result(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
