"""The source video: the test pattern, encoded by PyAV, switching resolution halfway.

Made by the example itself, so nothing is downloaded. Returns what each
frame should read as, so the run can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from examples.video_pipeline import pattern
from examples.video_pipeline.h264 import H264Writer, plane_rows


@dataclass(frozen=True)
class SourceFrame:
    number: int
    width: int
    height: int
    mean_luma: float  # of the picture before encoding


def frame_sizes(frames: int, first: tuple[int, int], second: tuple[int, int]) -> list[tuple[int, int]]:
    """Frame ``i``'s size: ``first`` for the first half, ``second`` after."""
    switch = frames // 2
    return [first if i < switch else second for i in range(frames)]


def write_source(path: Path, frames: int, first: tuple[int, int], second: tuple[int, int]) -> list[SourceFrame]:
    """Encode the test pattern into ``path`` (raw H.264); return what each frame holds."""
    import av

    expected = []
    writer = H264Writer(path)
    try:
        for number, (width, height) in enumerate(frame_sizes(frames, first, second)):
            luma = pattern.draw_luma(number, width, height)
            u, v = pattern.draw_chroma(number, width, height)
            frame = av.VideoFrame(width, height, "yuv420p")
            for plane, pixels in zip(frame.planes, (luma, u, v)):
                # PyAV pads rows to its own line size: copy row by row into it.
                rows = plane_rows(plane)
                rows[:, : pixels.shape[1]] = pixels
            writer.write(frame)
            expected.append(SourceFrame(number, width, height, pattern.mean_luma(luma, width)))
    finally:
        writer.close()
    return expected
