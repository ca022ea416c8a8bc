"""The comparison: the same three processes, with every frame copied through pipes.

Decoder -> analyser -> encoder as before, but each frame's pixels are
written into a pipe and read out of it at every hop (the way a pipeline
of ``ffmpeg ... -f rawvideo - | ...`` processes moves frames). The work
per frame is otherwise the same: the same decode, the same statistics,
the same encoder. Nothing is negotiated here: like ``-pix_fmt yuv420p`` on
both ends of an ffmpeg pipe, the format is fixed by convention (FORMAT).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

FORMAT = "YUV420"  # what PyAV decodes this source to; both ends of each pipe assume it
HEADER = struct.Struct("<iII")  # seq (-1: end), width, height; the frame's bytes follow


def pipe_frame_layout(width: int, height: int) -> tuple[dict, int]:
    """The layout of a frame in a pipe message, and its bytes: the decoder's slot layout, not page-rounded."""
    from bufbroker.formats import derive_layout
    from examples.video_pipeline.decoder import ALIGN

    layout = derive_layout(FORMAT, width, height, align=ALIGN, chroma_from_luma=True)
    return layout.to_dict(), layout.size


class PipeCounter:
    """Sends over a multiprocessing connection, counting bytes (payload plus 4-byte length)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.bytes_sent = 0

    def send(self, data: Any) -> None:
        self.connection.send_bytes(data)
        self.bytes_sent += memoryview(data).nbytes + 4


def piped_decoder_main(source: str, control: Any, to_analyser: Any) -> None:
    from bufbroker.formats import plane_views
    from examples.video_pipeline.decoder import copy_into
    from examples.video_pipeline.h264 import open_stream

    out = PipeCounter(to_analyser)
    container, stream = open_stream(Path(source))
    control.recv()  # start
    started, seq, frame_buffer, size = time.monotonic(), 0, bytearray(), (0, 0)
    with container:
        for seq, frame in enumerate(container.decode(stream)):
            if (frame.width, frame.height) != size:
                size = (frame.width, frame.height)
                layout, nbytes = pipe_frame_layout(*size)
                frame_buffer = bytearray(nbytes)
                planes = plane_views(frame_buffer, layout)
            copy_into(planes, frame, FORMAT)
            out.send(HEADER.pack(seq, *size))
            out.send(frame_buffer)
    out.send(HEADER.pack(-1, 0, 0))
    control.send(
        {"frames": seq + 1, "started": started, "pipe_bytes": out.bytes_sent, "cpu_seconds": time.process_time()}
    )


def piped_analyser_main(control: Any, from_decoder: Any, to_encoder: Any, max_frame_bytes: int) -> None:
    from bufbroker.formats import plane_views
    from examples.video_pipeline import pattern

    out = PipeCounter(to_encoder)
    buffer = bytearray(max_frame_bytes)
    numbers = []
    control.send("ready")
    while True:
        header = from_decoder.recv_bytes()
        seq, width, height = HEADER.unpack(header)
        if seq < 0:
            out.send(header)
            break
        length = from_decoder.recv_bytes_into(buffer)
        view = memoryview(buffer)[:length]
        layout, _ = pipe_frame_layout(width, height)
        luma = plane_views(view, layout)[0]
        numbers.append(pattern.read_number(luma, width, height))
        pattern.mean_luma(luma, width)  # the same work as the bufbroker analyser
        del luma
        out.send(header)
        out.send(view)
        view.release()
    control.send({"numbers": numbers, "pipe_bytes": out.bytes_sent, "cpu_seconds": time.process_time()})


def piped_encoder_main(output: str, control: Any, from_analyser: Any, max_frame_bytes: int) -> None:
    import av  # noqa: F401  (loaded before the clock starts, as in the bufbroker run)

    from bufbroker.av_frames import to_av
    from examples.video_pipeline.h264 import H264Writer

    writer = H264Writer(Path(output))
    buffer = bytearray(max_frame_bytes)
    control.send("ready")
    try:
        while True:
            seq, width, height = HEADER.unpack(from_analyser.recv_bytes())
            if seq < 0:
                break
            length = from_analyser.recv_bytes_into(buffer)
            view = memoryview(buffer)[:length]
            frame = to_av(view, pipe_frame_layout(width, height)[0])
            writer.write(frame)
            del frame
            view.release()
    finally:
        writer.close()
    control.send({"frames": writer.frames, "finished": time.monotonic(), "cpu_seconds": time.process_time()})
