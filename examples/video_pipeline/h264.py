"""Raw H.264 (Annex B) streams with PyAV: write frames, read them back.

A raw elementary stream may change resolution at any keyframe: the new
sequence parameter set says so, and FFmpeg's decoder follows it. So the
writer simply starts a fresh encoder when the frame size changes and keeps
appending to the same file, which is what a camera or a live transcoder
does at a resolution switch.
"""

from __future__ import annotations

import fractions
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FRAME_RATE = 30
# ultrafast + zerolatency: no B-frames and no lookahead, so every frame
# leaves the encoder at once and the example measures the pipeline, not
# x264's buffering.
ENCODER_OPTIONS = {"preset": "ultrafast", "tune": "zerolatency"}


class H264Writer:
    """Encode frames of any size into one raw H.264 file, in their own pixel format.

    ``write(frame)`` takes an ``av.VideoFrame`` of a format libx264 takes
    (yuv420p, nv12, ...); the encoder is opened with the frame's pix_fmt, so
    FFmpeg converts nothing, and reopened when the size or the format
    changes. ``close()`` flushes and closes the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.codec: Any = None  # an av VideoCodecContext while open
        self.size = (0, 0)
        self.pix_fmt = ""
        self.frames = 0
        self.bytes = 0

    def _open_codec(self, width: int, height: int, pix_fmt: str) -> None:
        import av

        self._flush()
        codec = av.CodecContext.create("libx264", "w")
        codec.width, codec.height, codec.pix_fmt = width, height, pix_fmt
        codec.time_base = fractions.Fraction(1, FRAME_RATE)
        codec.framerate = fractions.Fraction(FRAME_RATE)
        codec.options = dict(ENCODER_OPTIONS)
        self.codec, self.size, self.pix_fmt = codec, (width, height), pix_fmt

    def write(self, frame) -> None:
        if (frame.width, frame.height) != self.size or frame.format.name != self.pix_fmt:
            self._open_codec(frame.width, frame.height, frame.format.name)
        frame.pts = self.frames
        self.frames += 1
        self._write_packets(self.codec.encode(frame))

    def _write_packets(self, packets) -> None:
        for packet in packets:
            data = bytes(packet)
            self.file.write(data)
            self.bytes += len(data)

    def _flush(self) -> None:
        if self.codec is not None:
            self._write_packets(self.codec.encode(None))
            self.codec = None

    def close(self) -> None:
        self._flush()
        self.file.close()


def open_stream(path: Path):
    """An open raw H.264 container (use as a context manager) and its video stream."""
    import av

    container = av.open(str(path), format="h264")
    return container, container.streams.video[0]


def read_frames(path: Path) -> Iterator:
    """Every decoded frame of a raw H.264 file, in order (``av.VideoFrame``; yuv420p for 4:2:0)."""
    container, stream = open_stream(path)
    with container:
        yield from container.decode(stream)


def plane_rows(plane):
    """A (rows x line size) numpy view of a PyAV frame plane; FFmpeg pads rows to its line size."""
    import numpy

    return numpy.frombuffer(plane, numpy.uint8).reshape(plane.height, plane.line_size)
