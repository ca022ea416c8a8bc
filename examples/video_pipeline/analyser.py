"""Analyser stage: read each decoded frame zero-copy, measure it, publish what it read.

    python -m examples.video_pipeline.analyser SOCKET_DIR [--input decoded] [--output analysed]
        [--formats YUV420,NV12] [--result FILE]

Creates the stream ``analysed`` (a few one-page slots: what travels is the
frame meta) and waits for its consumer, the encoder; then subscribes to
``decoded`` (waiting for the decoder to create it), accepting the formats
it can read: any whose first plane is 8-bit luma (``--formats``, default
YUV420 and NV12), and says which pair the broker negotiated. For every
frame it reads the luma plane through its own read-only mapping
(``frame.planes()``, with the layout of the frame's generation), decodes
the frame number from the barcode and takes the mean luma, publishes
those numbers on ``analysed`` and releases the decoded frame. End of
``decoded`` ends ``analysed``.
"""

from __future__ import annotations

import argparse
import mmap
import sys
import time
from collections.abc import Sequence
from typing import Any

ANALYSED_SLOTS = 4
# What the analyser reads is the luma plane: any format whose first plane is 8-bit Y will do.
READS = ("YUV420", "NV12", "NV21", "YVU420", "NV16", "YUV422", "YUV444")
FORMATS = ("YUV420", "NV12")  # the ones it accepts unless told otherwise


def analyse(socket_dir: str, input_name: str, output_name: str, pairs: Sequence[str]) -> dict[str, Any]:
    import bufbroker
    from examples.video_pipeline import pattern
    from examples.video_pipeline.handoff import (
        ANALYSED_META,
        ANALYSER,
        DECODED_META,
        ENCODER,
        STARTUP_TIMEOUT,
        STEP_TIMEOUT,
        wait_for_consumers,
    )
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.reader import MapCounter, accept, frame_layout, mapped_regions, negotiated

    with bufbroker.connect(socket_dir, name=ANALYSER) as session:
        meter = ControlPlaneMeter(session)
        out = session.create_stream(
            output_name, slots=ANALYSED_SLOTS, size=mmap.PAGESIZE, offers=["segments", "memfd"], on_stall="report"
        )
        meter.fds += ANALYSED_SLOTS
        wait_for_consumers(session, out, [ENCODER])
        meter.fds += len(out.consumers())
        sub = session.subscribe(input_name, accept=accept(pairs), mode="queue", wait=STARTUP_TIMEOUT)
        meter.fds += 1
        attached = negotiated(sub, pairs, "analyser")
        maps = MapCounter(meter)
        stats = []
        while True:
            try:
                frame = sub.receive(STEP_TIMEOUT)
            except bufbroker.EndOfStream:
                break
            with frame:
                (index,) = DECODED_META.unpack(frame.meta)
                maps.note(frame)
                layout = frame_layout(frame)
                luma_plane = frame.planes()[0]  # (height, width) uint8 in every format it accepts
                width, height = layout["width"], layout["height"]
                number = pattern.read_number(luma_plane, width, height)
                luma = pattern.mean_luma(luma_plane, width)
                del luma_plane  # nothing may pin the mapping once the frame is released
                with out.acquire(timeout=STEP_TIMEOUT) as result:
                    result.publish(meta=ANALYSED_META.pack(frame.seq, index, number, luma))
            stats.append(
                {
                    "seq": index,
                    "stream_seq": frame.seq,
                    "number": number,
                    "mean_luma": luma,
                    "size": (width, height),
                    "format": layout["fourcc"],
                    "slot": frame.slot,
                    "generation": frame.generation,
                }
            )
        regions = mapped_regions()
        skipped = sub.skipped
        sub.close()
        drained = out.drain(STEP_TIMEOUT)
        out.close()
    return {
        "attached": attached,
        "stats": stats,
        "skipped": skipped,
        "drained": drained,
        "maps": maps.maps,
        "mapped_regions": regions,
        "meter": meter.summary(),
        "cpu_seconds": time.process_time(),  # every thread of this process, start-up included
    }


def main(argv: list[str] | None = None) -> int:
    from examples.video_pipeline.handoff import ANALYSED, DECODED, fail, write_result

    parser = argparse.ArgumentParser(
        prog="python -m examples.video_pipeline.analyser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("socket_dir")
    parser.add_argument("--input", default=DECODED, help=f"the stream to analyse (default {DECODED})")
    parser.add_argument("--output", default=ANALYSED, help=f"the stream to produce (default {ANALYSED})")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        metavar="PAIRS",
        help=f"the (format, modifier) pairs to accept, in this order (default {','.join(FORMATS)}; "
        f"it reads {', '.join(READS)})",
    )
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result JSON here (default stdout)")
    args = parser.parse_args(argv)
    try:
        from examples.video_pipeline.reader import parse_pairs

        pairs = parse_pairs(args.formats, READS, "analyser")
        result = analyse(args.socket_dir, args.input, args.output, pairs)
    except Exception as error:
        return fail("analyser", error)
    write_result(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
