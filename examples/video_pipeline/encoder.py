"""Encoder process: encode the frames the analyser passes on, check their order.

Reads each frame through its own read-only mapping and gives it to
libx264 without a copy of its own when the layout is the one FFmpeg uses
for a frame in one allocation (the decoder's is); FFmpeg copies the
picture into the encoder's frame before ``encode()`` returns, so the slot
can be released right after. At the end it decodes its own output to
check that every frame arrived once, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def encoder_main(
    socket_dir: str, names: Sequence[str], output: str, control: Any, from_analyser: Any, release: Any
) -> None:
    import time

    import av  # noqa: F401  (loaded before the clock starts)

    import bufbroker
    from examples.video_pipeline.h264 import H264Writer
    from examples.video_pipeline.handoff import ANALYSED, END, RELEASE, Channel
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.reader import PoolReader

    frames_in, releases = Channel(from_analyser), Channel(release)
    writer = H264Writer(Path(output))
    problems: list[str] = []
    with bufbroker.connect(socket_dir) as session:
        meter = ControlPlaneMeter(session)
        reader = PoolReader(session, names, meter)
        control.send({"map_type": reader.map_type, "trace": reader.attachments[0].trace})
        expected = 0
        try:
            while True:
                slot, generation, seq, number, _ = frames_in.receive(ANALYSED)
                if slot == END:
                    break
                if seq != expected or number != seq:
                    problems.append(f"got frame seq {seq} (pattern says {number}), expected {expected}")
                expected = seq + 1
                view, layout = reader.frame(slot, generation)
                frame = wrap_frame(view, layout)
                writer.write(frame)
                del frame, view  # FFmpeg holds its own copy now; nothing may pin the slot
                releases.send(RELEASE, slot, seq)
        finally:
            writer.close()
        finished = time.monotonic()
        regions = reader.mapped_regions()
        reader.detach()
        releases.send(RELEASE, END, 0)
        control.send(
            {
                "frames": writer.frames,
                "finished": finished,
                "problems": problems,
                "output_bytes": writer.bytes,
                "maps": reader.maps,
                "mapped_regions": regions,
                "handoff_bytes": releases.bytes_sent,
                "handoff_messages": releases.messages_sent,
                "meter": meter.summary(),
            }
        )
    control.send({"output": verify_output(Path(output))})
