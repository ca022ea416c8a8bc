"""Encoder stage: encode the decoded frames once the analyser has seen them, check their order.

    python -m examples.video_pipeline.encoder SOCKET_DIR OUTPUT [--frames decoded]
        [--analysis analysed] [--formats YUV420,NV12] [--result FILE]

Subscribes to ``analysed`` and to ``decoded`` (waiting for each to be
created), accepting on ``decoded`` the formats it encodes (``--formats``,
default YUV420 and NV12: libx264 takes them as they are, and PyAV wraps
them without a copy), and says which pair the broker negotiated. For
every decoded frame it takes the analyser's frame for it (so, as in a
chain decoder -> analyser -> encoder, a frame is encoded only after it was
analysed), checks the two agree and the order, and gives the picture to
libx264 through ``frame.to_av()``: a PyAV frame over its own read-only
mapping, without a copy when the layout is one array PyAV can wrap (the
decoder's is, for heights that are a multiple of 4), else a copy
(``bufbroker.av_frames.copy_reason`` says why; counted in the result).
FFmpeg copies the picture into the encoder's frame before ``encode()``
returns, so both frames are released right after. At the end of the
streams it decodes its own output to check that every frame arrived once,
in order.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Formats libx264 encodes as they are (H264Writer opens it with the frame's pix_fmt), by DRM name.
ENCODES = ("YUV420", "NV12", "NV21", "NV16", "YUV422", "YUV444")
FORMATS = ("YUV420", "NV12")  # the ones it accepts unless told otherwise: PyAV wraps both without a copy


def verify_output(path: Path) -> list[dict]:
    """Frame number and size of every frame in the encoded file."""
    from examples.video_pipeline import pattern
    from examples.video_pipeline.h264 import plane_rows, read_frames

    return [
        {"number": pattern.read_number(plane_rows(f.planes[0]), f.width, f.height), "size": (f.width, f.height)}
        for f in read_frames(path)
    ]


def encode(socket_dir: str, output: str, frames_name: str, analysis_name: str, pairs: Sequence[str]) -> dict[str, Any]:
    import time

    import av  # noqa: F401  (loaded before the clock starts)

    import bufbroker
    from bufbroker.av_frames import copy_reason
    from examples.video_pipeline.h264 import H264Writer
    from examples.video_pipeline.handoff import ANALYSED_META, DECODED_META, ENCODER, STARTUP_TIMEOUT, STEP_TIMEOUT
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.reader import (
        ACCEPT,
        MapCounter,
        accept,
        frame_layout,
        inodes,
        mapped_regions,
        negotiated,
    )

    writer = H264Writer(Path(output))
    problems: list[str] = []
    with bufbroker.connect(socket_dir, name=ENCODER) as session:
        meter = ControlPlaneMeter(session)
        analysis = session.subscribe(analysis_name, accept=ACCEPT, mode="queue", wait=STARTUP_TIMEOUT)
        pictures = session.subscribe(frames_name, accept=accept(pairs), mode="queue", wait=STARTUP_TIMEOUT)
        meter.fds += 2
        attached = negotiated(pictures, pairs, "encoder")
        maps = MapCounter(meter)
        expected = 0
        wrapped, copied = 0, dict[str, int]()  # frames handed to libx264 as they are; copies, by reason
        try:
            while True:
                try:
                    frame = pictures.receive(STEP_TIMEOUT)
                except bufbroker.EndOfStream:
                    break
                with frame, analysis.receive(STEP_TIMEOUT) as analysed:
                    (index,) = DECODED_META.unpack(frame.meta)
                    stream_seq, analysed_index, number, _ = ANALYSED_META.unpack(analysed.meta)
                    if index != expected or stream_seq != frame.seq or analysed_index != index or number != index:
                        problems.append(
                            f"got frame {index} (seq {frame.seq}; the analyser saw seq {stream_seq}, frame "
                            f"{analysed_index}, barcode {number}), expected frame {expected}"
                        )
                    expected = index + 1
                    maps.note(frame)
                    reason = copy_reason(frame_layout(frame), frame.size)
                    if reason is None:
                        wrapped += 1
                    else:
                        copied[reason] = copied.get(reason, 0) + 1
                    picture = frame.to_av()
                    writer.write(picture)
                    del picture  # FFmpeg holds its own copy now; nothing may pin the slot
        finally:
            writer.close()
        finished = time.monotonic()
        try:
            extra = analysis.receive(STEP_TIMEOUT)
            problems.append(f"the analyser published frame {extra.seq} for no decoded frame")
            extra.release()
        except bufbroker.EndOfStream:
            pass
        regions = mapped_regions(exclude=inodes(analysis))
        skipped = pictures.skipped + analysis.skipped
        analysis.close()
        pictures.close()
    return {
        "attached": attached,
        "frames": writer.frames,
        "wrapped": wrapped,
        "copied": copied,
        "finished": finished,
        "problems": problems,
        "skipped": skipped,
        "output_bytes": writer.bytes,
        "maps": maps.maps,
        "mapped_regions": regions,
        "meter": meter.summary(),
        "cpu_seconds": time.process_time(),  # every thread of this process, start-up included
        "output": verify_output(Path(output)),
    }


def main(argv: list[str] | None = None) -> int:
    from examples.video_pipeline.handoff import ANALYSED, DECODED, fail, write_result

    parser = argparse.ArgumentParser(
        prog="python -m examples.video_pipeline.encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("socket_dir")
    parser.add_argument("output", help="raw H.264 file to write")
    parser.add_argument("--frames", default=DECODED, help=f"the stream of pictures (default {DECODED})")
    parser.add_argument("--analysis", default=ANALYSED, help=f"the analyser's stream (default {ANALYSED})")
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        metavar="PAIRS",
        help=f"the (format, modifier) pairs to accept on the pictures' stream, in this order (default "
        f"{','.join(FORMATS)}; it encodes {', '.join(ENCODES)})",
    )
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result JSON here (default stdout)")
    args = parser.parse_args(argv)
    try:
        from examples.video_pipeline.reader import parse_pairs

        pairs = parse_pairs(args.formats, ENCODES, "encoder")
        result = encode(args.socket_dir, args.output, args.frames, args.analysis, pairs)
    except Exception as error:
        return fail("encoder", error)
    write_result(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
