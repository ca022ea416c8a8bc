"""Encoder stage: encode the decoded frames once the analyser has seen them, check their order.

    python -m examples.video_pipeline.encoder SOCKET_DIR OUTPUT [--frames decoded]
        [--analysis analysed] [--result FILE]

Subscribes to ``analysed`` and to ``decoded`` (waiting for each to be
created). For every decoded frame it takes the analyser's frame for it
(so, as in a chain decoder -> analyser -> encoder, a frame is encoded
only after it was analysed), checks the two agree and the order, reads
the picture through its own read-only mapping and gives it to libx264
without a copy of its own when the layout is the one FFmpeg uses for a
frame in one allocation (the decoder's is); FFmpeg copies the picture into
the encoder's frame before ``encode()`` returns, so both frames are
released right after. At the end of the streams it decodes its own output
to check that every frame arrived once, in order.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any


def wrap_frame(view: memoryview, layout: dict) -> Any:
    """An av.VideoFrame over the slot's memory if FFmpeg can use the layout as is, else a copy."""
    import av
    import numpy

    from bufbroker.planes import plane_arrays
    from examples.video_pipeline.h264 import plane_rows

    width, height = layout["width"], layout["height"]
    y, u, v = layout["planes"]
    stride = y["stride"]
    ffmpeg_layout = (
        # PyAV (18.1) derives the height as rows // 6 * 4, which loses two
        # rows unless the height is a multiple of 4.
        height % 4 == 0
        and y["offset"] == 0
        and u == {"offset": stride * height, "stride": stride // 2}
        and v == {"offset": stride * height + stride // 2 * (height // 2), "stride": stride // 2}
    )
    if ffmpeg_layout:
        # One (height * 3/2) x stride array spanning all three planes.
        array = numpy.ndarray((height * 3 // 2, stride), numpy.uint8, view, 0, (stride, 1))
        return av.VideoFrame.from_numpy_buffer(array, format="yuv420p", width=width)
    frame = av.VideoFrame(width, height, "yuv420p")
    for target, source in zip(frame.planes, plane_arrays(view, layout)):
        rows, row_bytes = source.shape
        plane_rows(target)[:rows, :row_bytes] = source
    return frame


def verify_output(path: Path) -> list[dict]:
    """Frame number and size of every frame in the encoded file."""
    from examples.video_pipeline import pattern
    from examples.video_pipeline.h264 import plane_rows, read_frames

    return [
        {"number": pattern.read_number(plane_rows(f.planes[0]), f.width, f.height), "size": (f.width, f.height)}
        for f in read_frames(path)
    ]


def encode(socket_dir: str, output: str, frames_name: str, analysis_name: str) -> dict[str, Any]:
    import time

    import av  # noqa: F401  (loaded before the clock starts)

    import bufbroker
    from examples.video_pipeline.h264 import H264Writer
    from examples.video_pipeline.handoff import ANALYSED_META, DECODED_META, ENCODER, STARTUP_TIMEOUT, STEP_TIMEOUT
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.reader import ACCEPT, MapCounter, frame_view, inodes, mapped_regions

    writer = H264Writer(Path(output))
    problems: list[str] = []
    with bufbroker.connect(socket_dir, name=ENCODER) as session:
        meter = ControlPlaneMeter(session)
        analysis = session.subscribe(analysis_name, accept=ACCEPT, mode="queue", wait=STARTUP_TIMEOUT)
        pictures = session.subscribe(frames_name, accept=ACCEPT, mode="queue", wait=STARTUP_TIMEOUT)
        meter.fds += 2
        attached = {
            "map_type": pictures.attachments[0].map_type,
            "trace": [asdict(s) for s in pictures.attachments[0].trace],
        }
        maps = MapCounter(meter)
        expected = 0
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
                    view, layout = frame_view(frame)
                    picture = wrap_frame(view, layout)
                    writer.write(picture)
                    del picture, view  # FFmpeg holds its own copy now; nothing may pin the slot
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
    parser.add_argument("--result", default=None, metavar="FILE", help="write the result JSON here (default stdout)")
    args = parser.parse_args(argv)
    try:
        result = encode(args.socket_dir, args.output, args.frames, args.analysis)
    except Exception as error:
        return fail("encoder", error)
    write_result(result, args.result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
