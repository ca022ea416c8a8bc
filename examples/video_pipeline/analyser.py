"""Analyser process: read each frame zero-copy, measure it, tell the encoder.

For every slot the decoder hands over, it reads the frame through its own
read-only mapping as numpy views (via the layout), decodes the frame
number from the barcode and takes the mean luma, passes the slot on to the
encoder with those numbers, and releases the slot to the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def analyser_main(
    socket_dir: str, names: Sequence[str], control: Any, from_decoder: Any, to_encoder: Any, release: Any
) -> None:
    import bufbroker
    from bufbroker.planes import plane_arrays
    from examples.video_pipeline import pattern
    from examples.video_pipeline.handoff import ANALYSED, END, FRAME, RELEASE, Channel
    from examples.video_pipeline.meter import ControlPlaneMeter
    from examples.video_pipeline.reader import PoolReader

    frames_in, frames_out, releases = Channel(from_decoder), Channel(to_encoder), Channel(release)
    with bufbroker.connect(socket_dir) as session:
        meter = ControlPlaneMeter(session)
        reader = PoolReader(session, names, meter)
        control.send({"map_type": reader.map_type, "trace": reader.attachments[0].trace})
        stats = []
        while True:
            slot, generation, seq = frames_in.receive(FRAME)
            if slot == END:
                frames_out.send(ANALYSED, END, 0, 0, 0, 0.0)
                break
            view, layout = reader.frame(slot, generation)
            luma_plane = plane_arrays(view, layout)[0]
            width, height = layout["width"], layout["height"]
            number = pattern.read_number(luma_plane, width, height)
            luma = pattern.mean_luma(luma_plane, width)
            del view, luma_plane  # nothing may pin the mapping once the slot is released
            frames_out.send(ANALYSED, slot, generation, seq, number, luma)
            releases.send(RELEASE, slot, seq)
            stats.append(
                {
                    "seq": seq,
                    "number": number,
                    "mean_luma": luma,
                    "size": (width, height),
                    "slot": slot,
                    "generation": generation,
                }
            )
        regions = reader.mapped_regions()
        reader.detach()
        releases.send(RELEASE, END, 0)
        control.send(
            {
                "stats": stats,
                "maps": reader.maps,
                "mapped_regions": regions,
                "handoff_bytes": frames_out.bytes_sent + releases.bytes_sent,
                "handoff_messages": frames_out.messages_sent + releases.messages_sent,
                "meter": meter.summary(),
            }
        )
